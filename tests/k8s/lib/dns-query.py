"""Resolves an A record with one UDP query to a given server (the host has no dig)."""
import random
import socket
import struct
import sys

server, name = sys.argv[1], sys.argv[2]
qid = random.randrange(65536)
question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(packet, (server, 53))
data, _ = sock.recvfrom(4096)
answers = struct.unpack(">H", data[6:8])[0]
pos = 12 + len(question) + 4
for _ in range(answers):
    if data[pos] & 0xC0 == 0xC0:
        pos += 2
    else:
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    rtype, _, _, length = struct.unpack(">HHIH", data[pos : pos + 10])
    pos += 10
    if rtype == 1 and length == 4:
        print(socket.inet_ntoa(data[pos : pos + 4]))
        break
    pos += length
