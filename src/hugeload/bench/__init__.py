"""Benchmarks behind `hugeload bench`: one module per subcommand, each with a `run(options)` that
returns its results for the CLI (or a script) to render.

    tlb, tensors, stage        memory benches: one working set per backing (4k, thp, 2m, 1g)
    engine, fleet, hotpath     engine benches: a real engine (llama.cpp) or the preload library
What they share, one module each:
    backings      what memory can be in, by name, and the parsing of --backings
    copies        the copies and pool pages an engine backing needs (bench engine)
    reservations  huge pages reserved for a run and always given back
    verify        is the memory in the pages the backing claims (else it is skipped, not timed)
    stats         medians, intervals, paired ratios, and the one meaning of "within noise"
    summary       bench engine's results summarised
    limits        the read-bandwidth limit of token generation
    pagecache     a file cold or warm in the page cache
    scratch       temporary files and directories other users cannot hijack
    common        notes every result carries, the native loops, plots
Engines start through hugeload.launch and their reports are read through hugeload.report.
"""
