"""The pod record: each runtime's pods as it last answered, and kubelet's changes since.

podrecord.py keeps it and answers from it (a List for a runtime that cannot
answer; which runtime a pod is on, for image calls); podchanges.py says what
each of kubelet's calls changes; listfilter.py applies a List's filter as a
runtime would; recordfile.py keeps the record in the runtime dir.

May import: settings, logs (plus the CRI stubs and protobuf). Never front/,
ops/, process/ or wire/: the front and operations use the record, not the
other way round (the front counts what the record serves).
"""
