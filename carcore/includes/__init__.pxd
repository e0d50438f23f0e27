# Marks carcore/includes as a Cython package of declarations (uvloop layout).
