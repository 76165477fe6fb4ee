"""Coverage-guided fuzz targets of criproxy's decoders (issue 25).

One module per target (target_*.py), each with `test_one_input(data)`: plain
Python, so tests/process/test_fuzz_corpus.py replays the stored corpus and crash inputs
without atheris; `make fuzz` (fuzz/run.py) runs them under atheris. May import
anything of criproxy's and of the tests' helpers.
"""
