# SPDX-License-Identifier: Apache-2.0
"""The backbone: plain tensor maths, no I/O, no family names."""
