"""A minimal LSP client over stdio: starts `archc lsp` and speaks JSON-RPC to it. The tests and
bench/lsp_latency.py drive the real server with it, as an editor would."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path


class Client:
    def __init__(self, cwd: str | Path | None = None, timeout: float = 30.0):
        self.proc = subprocess.Popen([sys.executable, "-m", "archc.cli", "lsp"], cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.timeout = timeout
        self.inbox: queue.Queue = queue.Queue()
        self.notifications: list = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.capabilities = self.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})["capabilities"]
        self.notify("initialized", {})

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while (line := out.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if line == b"" or length is None:
                return
            self.inbox.put(json.loads(out.read(length)))

    def _send(self, msg: dict) -> None:
        body = json.dumps(msg).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def _next(self) -> dict:
        try:
            return self.inbox.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError("the language server did not answer") from None

    def notify(self, method: str, params: dict) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: dict):
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        while True:
            msg = self._next()
            if msg.get("id") == self.next_id and "method" not in msg:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg.get("result")
            self.notifications.append(msg)

    def diagnostics(self, uri: str) -> list:
        """The next diagnostics published for `uri`."""
        while True:
            for i, msg in enumerate(self.notifications):
                if msg.get("method") == "textDocument/publishDiagnostics" and msg["params"]["uri"] == uri:
                    del self.notifications[i]
                    return msg["params"]["diagnostics"]
            self.notifications.append(self._next())

    # ---- documents ----
    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "arch", "version": version,
                                                              "text": text}})

    def change(self, uri: str, text: str, version: int) -> None:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [{"text": text}]})

    def at(self, method: str, uri: str, line: int, character: int, **extra):
        return self.request(method, {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                                     **extra})

    def close(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
