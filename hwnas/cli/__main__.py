"""`python -m hwnas.cli`: the `hwnas` command without its installed script."""

from hwnas.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
