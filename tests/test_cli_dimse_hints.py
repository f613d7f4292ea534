"""The AE-title hint is given only where it fits (issue #17).

"is calling AE RTLAKE allowed to query this PACS?" explains a PACS that ends the association
itself instead of answering (what a PACS does to an AE it does not know); it does not explain a
connection reset by the network. Both peers here are real pynetdicom SCPs on loopback: one
answers C-FIND with an A-ABORT, the other resets the TCP connection (SO_LINGER 0, so the
client reads ECONNRESET, as behind a failing firewall).
"""

from __future__ import annotations

import socket
import struct

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from ingest.errors import SourceUnavailable
from ingest.sources._query import StudyQuery
from ingest.sources.dimse import DimseSource


def _scp(on_find):
    ae = AE("PEER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    return server, server.server_address[1]


def _abort(event):
    event.assoc.abort()
    yield 0xC000, None  # never sent: the association is gone


def _reset(event):
    sock = event.assoc.dul.socket.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    yield 0xC000, None


@pytest.mark.parametrize("handler, hint", [(_abort, True), (_reset, False)], ids=["a-abort", "reset"])
def test_ae_title_hint_only_when_the_pacs_ends_the_association(handler, hint):
    server, port = _scp(handler)
    src = DimseSource("127.0.0.1", port, "PEER", "RTLAKESCU", name="peer")
    src.transfer.retries, src.transfer.backoff = 0, 0
    try:
        with pytest.raises(SourceUnavailable) as err:
            src.find(StudyQuery(patient_id="H001"))
    finally:
        src.close()
        server.shutdown()
    msg = str(err.value)
    assert "no C-FIND response" in msg
    assert ("is calling AE RTLAKESCU allowed" in msg) is hint, msg
    if not hint:
        assert "connection lost" in msg
