"""One module per installed program; each has `main(argv) -> int` and `run()`."""
