"""Pure decisions: which page size, how many pages, what it costs, what to tell the user.  No I/O."""
