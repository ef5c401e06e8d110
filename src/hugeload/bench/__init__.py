"""Benchmarks behind `hugeload bench`: one module per subcommand, each with a
pure `run(...)` that returns its results for the CLI (or a script) to render."""
