"""Packaging; the native extension is described in xcodec_fast/ops/native.py (built on first use)."""

from setuptools import setup

setup()
