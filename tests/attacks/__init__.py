"""Hostile files on purpose: byte builders, a seeded structure-aware mutator, and the fuzzer.

- ``gguf_bytes``: GGUF files assembled piece by piece (and taken apart), so a test can break
  exactly one rule.
- ``hostile``: one builder per bug that mutation found, each the input of a regression test
  (``tests/test_hostile_*.py``).
- ``seeds``: small valid files of every kind a reader takes (the mutator's starting points).
- ``mutate``: the seeded mutator for bytes, JSON and pickles; ``mutate_files``: for whole
  files by format (safetensors, GGUF, zips) and for folders (files removed, turned into
  folders, FIFOs or links).
- ``targets``: what each case runs (open and read every tensor, load the adapter and run the
  model, restore the checkpoint, query the store).
- ``fuzz``: the driver; each case in a forked child under a time and memory limit.
  ``python tests/attacks/fuzz.py --seconds 60`` (``make fuzz SECONDS=60``).
"""
