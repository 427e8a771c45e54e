"""A sweep on Ray Tune: the trial function, the monitor of trials, the search space and the report."""
