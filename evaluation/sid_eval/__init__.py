"""Offline ranking evaluation of Semantic-ID features (random hashing vs unique IDs vs dense
content vs SID parameterizations), sliced by new items and head/torso/tail popularity."""
