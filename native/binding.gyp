{
  "targets": [
    {
      "target_name": "weave_tunio",
      "sources": ["tunio.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
