"""`python -m goproxy_router`: the same command line as `goproxy-router`."""

from goproxy_router.runtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
