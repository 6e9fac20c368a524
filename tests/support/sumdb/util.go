package main

import (
	"encoding/base64"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// hashReader serves stored hashes from a slice, like sumdb.TestServer's.
type hashReader []tlog.Hash

func (h hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	var list []tlog.Hash
	for _, i := range indexes {
		list = append(list, h[i])
	}
	return list, nil
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func mustVerifier(vkey string) note.Verifier {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		fail("%v", err)
	}
	return v
}
