"""Hostile and ordinary senders for the listener tests: idle sockets, TLS certificates, deflate bombs,
C-STOREs without a data set, and a `kaapana listen` subprocess whose peak memory can be read."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage

from airflow_provider_kaapana.core.dicom.raw import file_header
from airflow_provider_kaapana.core.net.dimse import configure_pynetdicom

EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"


def idle_sockets(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` TCP connections to the listener that never send a byte."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True if the other end closes ``sock`` within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def make_certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl CLI needed to make a test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def sender(calling: str = "SENDER", *transfer_syntaxes: str, abstract_syntaxes=(CTImageStorage,)) -> AE:
    """A pynetdicom AE that sends files as they are on disk (no decode and re-encode)."""
    configure_pynetdicom()
    ae = AE(ae_title=calling)
    for abstract in abstract_syntaxes:
        ae.add_requested_context(abstract, list(transfer_syntaxes or [EXPLICIT_LE]))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file (what went over the wire), without its file meta."""
    data = path.read_bytes()
    from airflow_provider_kaapana.core.dicom.elements import read_file_meta

    return data[read_file_meta(data)[1] :]


def deflated_file(src: Path, dst: Path) -> Path:
    """``src`` re-encoded in the deflated explicit VR little endian transfer syntax."""
    ds = pydicom.dcmread(src)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(fp.getvalue()) + packer.flush()
    dst.write_bytes(file_header(ds.SOPClassUID, ds.SOPInstanceUID, DEFLATED, "SENDER") + body)
    return dst


def deflate_bomb(src: Path, dst: Path, inflated_mb: int = 300) -> Path:
    """A deflated instance of ``src``'s UIDs whose Pixel Data inflates to ``inflated_mb`` MB of zeros
    (about 300 KB on the wire for 300 MB); never holds the inflated bytes in memory."""
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    size = inflated_mb << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(fp.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, size))]
    zeros = bytes(1 << 20)
    parts += [packer.compress(zeros) for _ in range(inflated_mb)]
    parts.append(packer.flush())
    dst.write_bytes(file_header(ds.SOPClassUID, ds.SOPInstanceUID, DEFLATED, "BOMBER") + b"".join(parts))
    return dst


def store_without_dataset(port: int, sop_instance_uid: str = "1.2.3.4", then: Path | None = None):
    """A C-STORE-RQ announcing a data set of which nothing follows, then (same association) ``then``;
    returns (response status or None, seconds waited, status of ``then`` or None)."""
    ae = sender("EMPTY")
    assoc = ae.associate("127.0.0.1", port, ae_title="KAAPANA")
    assert assoc.is_established
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = CTImageStorage, sop_instance_uid
    req.DataSet = BytesIO(b"")
    # pause the association's reactor as pynetdicom's own send_*() do, or it takes the response
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    started = time.monotonic()
    assoc.dimse.send_msg(req, assoc.accepted_contexts[0].context_id)
    _cx, rsp = assoc.dimse.get_msg(block=True)
    waited = time.monotonic() - started
    assoc._reactor_checkpoint.set()
    after = assoc.send_c_store(then).Status if then is not None and assoc.is_established else None
    assoc.release()
    return (rsp.Status if rsp is not None else None), waited, after


class ListenerProcess:
    """`kaapana listen --no-trigger` as a subprocess (its memory is its own); stderr goes to a file."""

    def __init__(self, landing: Path, *extra: str) -> None:
        self.stderr_path = landing.parent / "listener.stderr"
        self.stderr = self.stderr_path.open("w")
        cmd = [sys.executable, "-m", "airflow_provider_kaapana", "-v", "listen", "--port", "0"]
        cmd += ["--landing", str(landing), "--no-trigger", "--min-free-mb", "1", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.proc.stdout.readline()
        assert " on " in line, (line, self.log())
        self.port = int(line.split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])

    def peak_rss_mb(self) -> float:
        """The process' peak resident memory so far (VmHWM), MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        return self.stderr_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode
