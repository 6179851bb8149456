"""Search spaces for --tune: one <Model>.hyper per model (RecBole format)."""
