"""Grammar-constrained decoding: a regex or JSON schema becomes a token-level automaton
(outlines-core `Index`) that says, in each state, which token ids may come next.

Modules, each usable alone (import names from the module that defines them):
- `vocabulary`: `token_bytes_table` (every ordinary token's raw bytes) and `TokenizerVocab`
  (that table as an outlines-core `Vocabulary`, built once per tokenizer).
- `json_schema`: `normalize_json_schema`, `unenforced_features`, `json_schema_to_regex` (a
  schema as the regex outlines-core builds for it, refused if it uses a keyword the regex
  would not enforce) and `check_regex_syntax`.
- `grammar`: `CompiledGrammar` (an automaton with per-state allowed tokens, cached mask rows
  and jump-forward drafts), `Grammar` (one request's state in it) and `build_vocab_mask`.
- `grammar_cache`: `GrammarCache`, the LRU of compiled grammars, compiled on a worker thread.

outlines-core is imported only where an automaton or a schema translation is built, so
validating a request's constraint shape (`normalize_json_schema`) does not load it.
"""
