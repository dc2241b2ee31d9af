#!/usr/bin/env python3
"""A SOCKS5 client built by hand from RFC 1928 and RFC 1929, with Python's socket module.

It performs one negotiation and prints what the proxy answered, one `key=value` per line,
so a test can check the exact reply codes:

    socks_client.py PROXY_HOST PROXY_PORT [options] COMMAND ATYP ADDRESS PORT

COMMAND is connect, bind, udp or a number; ATYP is ipv4, domain, ipv6 or a number. Options:
--methods 0,2 (offered methods), --auth USER:PASSWORD, --send TEXT (after a successful
reply, send TEXT and print what comes back until the peer closes).
"""

import argparse
import ipaddress
import socket
import struct
import sys

COMMANDS = {"connect": 1, "bind": 2, "udp": 3}
ADDRESS_TYPES = {"ipv4": 1, "domain": 3, "ipv6": 4}


def recv_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def encode_address(atyp, address):
    if atyp == 1:
        return ipaddress.IPv4Address(address).packed
    if atyp == 4:
        return ipaddress.IPv6Address(address).packed
    if atyp == 3:
        name = address.encode()
        return bytes([len(name)]) + name
    return address.encode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("proxy_host")
    parser.add_argument("proxy_port", type=int)
    parser.add_argument("command")
    parser.add_argument("atyp")
    parser.add_argument("address")
    parser.add_argument("port", type=int)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--auth", default=None)
    parser.add_argument("--send", default=None)
    args = parser.parse_args()

    command = COMMANDS.get(args.command) or int(args.command)
    atyp = ADDRESS_TYPES.get(args.atyp) or int(args.atyp)
    if args.methods is not None:
        methods = [int(m) for m in args.methods.split(",")]
    else:
        methods = [2] if args.auth else [0]

    sock = socket.create_connection((args.proxy_host, args.proxy_port), timeout=30)
    try:
        sock.sendall(bytes([5, len(methods)] + methods))
        version, method = recv_exactly(sock, 2)
        print(f"method={method}")
        if method == 0xFF:
            return
        if method == 2:
            user, _, password = (args.auth or ":").partition(":")
            user, password = user.encode(), password.encode()
            sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
            _, status = recv_exactly(sock, 2)
            print(f"auth={status}")
            if status != 0:
                return
        request = bytes([5, command, 0, atyp]) + encode_address(atyp, args.address)
        sock.sendall(request + struct.pack("!H", args.port))
        version, reply, _, bound_atyp = recv_exactly(sock, 4)
        length = {1: 4, 4: 16}.get(bound_atyp)
        if length is None:
            length = recv_exactly(sock, 1)[0]
        recv_exactly(sock, length + 2)
        print(f"version={version}")
        print(f"reply={reply}")
        if reply == 0 and args.send is not None:
            sock.sendall(args.send.encode().decode("unicode_escape").encode("latin-1"))
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            print("answer=" + answer.decode("utf-8", "replace").replace("\r\n", "\\r\\n"))
    except (EOFError, OSError) as e:
        print(f"error={e}")
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
