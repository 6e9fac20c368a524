// Command sumdbtest is the tests' real checksum database, built from the Go team's
// golang.org/x/mod sources in GOPATH mode (tests/support/sumdb.py builds and runs it).
//
//	sumdbtest serve -dir DIR -name NAME [-listen 127.0.0.1:0] [-log FILE]
//	sumdbtest vectors -dir DIR -name NAME
//
// DIR holds module files in the GOPROXY layout: DIR/<escaped path>/@v/<escaped version>.zip
// and .mod. serve answers /lookup/, /latest and /tile/ with sumdb.NewServer over an
// in-memory sumdb.TestServer signed with a generated key; a module's record (its go.sum
// lines) is computed from DIR on its first lookup. It prints one JSON line
// {"vkey": ..., "addr": ...} once listening, and appends every request path to FILE.
// vectors prints JSON test vectors: the h1 hashes of every zip and go.mod in DIR, the
// records and signed tree note of a log holding them all, its tiles and record proofs.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "sumdbtest: "+format+"\n", args...)
	os.Exit(1)
}

// moduleFile is DIR's file for path@version with the given extension.
func moduleFile(dir, path, version, ext string) (string, error) {
	ep, err := module.EscapePath(path)
	if err != nil {
		return "", err
	}
	ev, err := module.EscapeVersion(version)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.FromSlash(ep), "@v", ev+ext), nil
}

// goSum computes the two go.sum lines of path@version from DIR, as the go command would.
func goSum(dir, path, version string) ([]byte, error) {
	zipName, err := moduleFile(dir, path, version, ".zip")
	if err != nil {
		return nil, err
	}
	modName, _ := moduleFile(dir, path, version, ".mod")
	if _, err := os.Stat(zipName); err != nil {
		return nil, err // os.IsNotExist: the server answers 404
	}
	zipHash, err := dirhash.HashZip(zipName, dirhash.Hash1)
	if err != nil {
		return nil, err
	}
	modHash, err := modHash(modName)
	if err != nil {
		return nil, err
	}
	return []byte(fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", path, version, zipHash, path, version, modHash)), nil
}

func modHash(name string) (string, error) {
	return dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) { return os.Open(name) })
}

// modules lists path@version for every zip in DIR, sorted.
func modules(dir string) []module.Version {
	var list []module.Version
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || !strings.HasSuffix(p, ".zip") {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		i := strings.Index(rel, "/@v/")
		if i < 0 {
			return nil
		}
		path, err1 := module.UnescapePath(rel[:i])
		version, err2 := module.UnescapeVersion(strings.TrimSuffix(rel[i+len("/@v/"):], ".zip"))
		if err1 != nil || err2 != nil {
			fail("bad module file %s", rel)
		}
		list = append(list, module.Version{Path: path, Version: version})
		return nil
	})
	sort.Slice(list, func(i, j int) bool { return list[i].String() < list[j].String() })
	return list
}

type logged struct {
	h   http.Handler
	mu  sync.Mutex
	out *os.File
}

func (l *logged) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if l.out != nil {
		l.mu.Lock()
		fmt.Fprintln(l.out, r.URL.Path)
		l.mu.Unlock()
	}
	l.h.ServeHTTP(w, r)
}

func serve(dir, name, listen, logFile string) {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		fail("%v", err)
	}
	ts := sumdb.NewTestServer(skey, func(path, version string) ([]byte, error) { return goSum(dir, path, version) })
	h := &logged{h: sumdb.NewServer(ts)}
	if logFile != "" {
		if h.out, err = os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
			fail("%v", err)
		}
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fail("%v", err)
	}
	line, _ := json.Marshal(map[string]string{"vkey": vkey, "addr": ln.Addr().String()})
	fmt.Println(string(line))
	fail("%v", http.Serve(ln, h))
}

type proof struct {
	Record string   `json:"record"` // the record's text
	Index  int64    `json:"index"`
	Proof  []string `json:"proof"` // tlog.ProveRecord against the whole tree
}

type vectors struct {
	Vkey      string            `json:"vkey"`
	H1        map[string]string `json:"h1"`   // "path version" and "path version/go.mod" -> h1:
	Note      string            `json:"note"` // the signed tree note
	TreeSize  int64             `json:"tree_size"`
	TreeHash  string            `json:"tree_hash"`
	Tiles     map[string]string `json:"tiles"` // tile path (height 8 and height 2) -> base64 data
	Records   []proof           `json:"records"`
	OldSize   int64             `json:"old_size"` // a tree-consistency proof from OldSize to TreeSize
	OldHash   string            `json:"old_hash"`
	TreeProof []string          `json:"tree_proof"`
}

func hashes(list []tlog.Hash) []string {
	out := []string{}
	for _, h := range list {
		out = append(out, h.String())
	}
	return out
}

func emitVectors(dir, name string) {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		fail("%v", err)
	}
	ts := sumdb.NewTestServer(skey, func(path, version string) ([]byte, error) { return goSum(dir, path, version) })
	ctx := context.Background()
	v := vectors{Vkey: vkey, H1: map[string]string{}, Tiles: map[string]string{}}
	var records [][]byte
	for _, m := range modules(dir) {
		id, err := ts.Lookup(ctx, m)
		if err != nil {
			fail("%v", err)
		}
		rec, _ := ts.ReadRecords(ctx, id, 1)
		records = append(records, rec[0])
		for _, line := range strings.Split(strings.TrimSuffix(string(rec[0]), "\n"), "\n") {
			f := strings.Fields(line)
			v.H1[f[0]+" "+f[1]] = f[2]
		}
	}
	signed, err := ts.Signed(ctx)
	if err != nil {
		fail("%v", err)
	}
	v.Note = string(signed)
	n, _ := note.Open(signed, note.VerifierList(mustVerifier(vkey)))
	tree, err := tlog.ParseTree([]byte(n.Text))
	if err != nil {
		fail("%v", err)
	}
	v.TreeSize, v.TreeHash = tree.N, tree.Hash.String()
	var stored []tlog.Hash
	for i, rec := range records {
		more, err := tlog.StoredHashes(int64(i), rec, hashReader(stored))
		if err != nil {
			fail("%v", err)
		}
		stored = append(stored, more...)
	}
	for _, height := range []int{2, 8} {
		for _, t := range tlog.NewTiles(height, 0, tree.N) {
			data, err := tlog.ReadTileData(t, hashReader(stored))
			if err != nil {
				fail("%v", err)
			}
			v.Tiles[t.Path()] = base64Std(data)
		}
	}
	for i, rec := range records {
		p, err := tlog.ProveRecord(tree.N, int64(i), hashReader(stored))
		if err != nil {
			fail("%v", err)
		}
		v.Records = append(v.Records, proof{Record: string(rec), Index: int64(i), Proof: hashes(p)})
	}
	if tree.N > 1 {
		v.OldSize = tree.N / 2
		old, _ := tlog.TreeHash(v.OldSize, hashReader(stored))
		v.OldHash = old.String()
		p, err := tlog.ProveTree(tree.N, v.OldSize, hashReader(stored))
		if err != nil {
			fail("%v", err)
		}
		v.TreeProof = hashes(p)
	}
	out, _ := json.MarshalIndent(v, "", " ")
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: sumdbtest serve|vectors -dir DIR -name NAME")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", "", "module files in the GOPROXY layout")
	name := fs.String("name", "sumdb.test", "the database's name")
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	logFile := fs.String("log", "", "append each request path to this file")
	fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "serve":
		serve(*dir, *name, *listen, *logFile)
	case "vectors":
		emitVectors(*dir, *name)
	default:
		fail("unknown command %q", os.Args[1])
	}
}
