"""Framework callbacks that run `nandoctor.watch` inside a trainer (lightning, transformers).
Each module imports its framework lazily, only when imported itself."""
