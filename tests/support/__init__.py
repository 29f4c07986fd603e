"""Helpers shared by the test suites (one copy each): the source-tree import, chroot, .deb, status and plan helpers."""
