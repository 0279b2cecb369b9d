"""Constrained decoding: a regex, a JSON schema, an EBNF (GBNF) or a Lark grammar becomes a
per-request matcher that says, at each step, which token ids may come next.

Modules, each usable alone (import names from the module that defines them):
- `backend`: the interface the scheduler and sampler use (`Constraint`, `GrammarMatcher`,
  `CompiledConstraint`), `choose_backend` (what `grammar_backend="auto"` picks) and
  `check_constraint` (the early, vocabulary-free refusal of what a backend cannot enforce).
- `grammar`: the outlines-core backend: `CompiledGrammar` (a token automaton with per-state
  allowed tokens, cached mask rows and jump-forward drafts), `Grammar` (one request's state in
  it), `ReasoningGate` and `build_vocab_mask`.
- `llguidance_backend`: the llguidance backend (`LLGuidanceCompiled`, `LLGuidanceMatcher`).
- `vocabulary`: `token_bytes_table` and `TokenizerVocab` (every token's raw bytes, shared by
  both backends).
- `json_schema`: `normalize_json_schema`, `unenforced_features`, `json_schema_to_regex` (a
  schema as the regex outlines-core builds for it) and `check_regex_syntax`.
- `grammar_cache`: `GrammarCache`, the LRU of compiled constraints, compiled on a worker thread.

outlines-core and llguidance are imported only where a constraint is checked or compiled, so
validating a request's constraint shape (`normalize_json_schema`) loads neither.
"""
