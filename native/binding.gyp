{
  "targets": [
    {
      "target_name": "weave_tunio",
      "sources": ["tunio.c", "secretbox.c"],
      "cflags": ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
