"""Crash bundles as a source of runs: one rank of a bundle (`ranks`) and the bundle turned into
a model file whose functions restore its state (`rebuild`), for `nandoctor replay`."""
