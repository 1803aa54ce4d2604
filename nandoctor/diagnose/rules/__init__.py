"""One file per cause family; each rule is a small pure function of the trace."""
