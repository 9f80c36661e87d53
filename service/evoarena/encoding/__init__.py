"""The compact encoding of Such et al. 2017, in one place: a network is its architecture and a
genome (a founder seed and a list of mutations drawn from a shared noise table), and any worker
rebuilds its weights from that list.

`arch.py` and `nets.py` describe and run networks from one flat parameter vector; `genome.py` is
the genome and its mutations; `noise.py` the shared noise table; `materialize.py` builds a
genome's weights through a cache of parents; `batched.py` runs a group of siblings in one pass;
`arithmetic.py` chooses the CPU's arithmetic (fast or reproducible).
"""
