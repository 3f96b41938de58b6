"""Test helpers that ship with degen so engines, benchmarks and users' own tests can
share them: a real llama.cpp server on loopback and a scripted fault server."""
