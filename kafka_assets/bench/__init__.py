"""`make bench`: the pipeline's figures, each measured beside its baseline in the same run.

Speed is measured here and only here; the tests assert behaviour, never time. Every ratio in the
report compares two things run on the same machine, the same services and the same messages,
one after the other in one process.
"""
