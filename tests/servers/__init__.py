"""Servers the tests start on 127.0.0.1: a real llama.cpp server and a scripted one."""
