"""Network architectures of the demo zoo; each module is self-contained so it can ship inside a package."""
