"""Content-Security-Policy for the self-contained report: only our own inline scripts may run.

Prompts and titles come from untrusted files (I2P is scraped text). Autoescaping keeps them from
becoming markup; the policy is the second wall: a script that is not one of ours (hashed here,
before any user text is placed) does not run, and nothing may be loaded from anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import re

SCRIPT = re.compile(r"<script[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def script_hashes(*fragments: str) -> list[str]:
    """CSP 'sha256-...' sources for every inline script in fragments we generated ourselves."""
    hashes = []
    for fragment in fragments:
        for body in SCRIPT.findall(fragment or ""):
            digest = hashlib.sha256(body.encode("utf-8")).digest()
            hashes.append(f"'sha256-{base64.b64encode(digest).decode()}'")
    return sorted(set(hashes))


def policy(hashes: list[str]) -> str:
    """No network, no plugins, no forms; images and fonts only from data: URIs."""
    scripts = " ".join(hashes) if hashes else "'none'"
    return (
        "default-src 'none'; img-src data:; font-src data:; style-src 'unsafe-inline'; "
        f"script-src {scripts}; base-uri 'none'; form-action 'none'"
    )
