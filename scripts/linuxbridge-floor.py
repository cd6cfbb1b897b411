#!/usr/bin/env python3
"""The kernel's floor for a mass failover on the Linux bridge backend, without hagw (issue 17).

N routers wired as hagw-bench's linuxbridge fleet (tests/src/bench/wiring.rs: each router's
qg-, qr- and ha- veths, their taps on three bridges in a node namespace, the external one with
an uplink to a ToR namespace), every gateway tap held by a copy of hagw's nft table. Once the
uplink forwards, t0: one nft transaction releases all N taps, then one gratuitous ARP (and with
--na an unsolicited NA, as hagw sends) leaves each router namespace on a packet socket opened
beforehand, from --senders processes. Prints when the last gARP reached the ToR (pcap on up0).
Usage (root): scripts/linuxbridge-floor.py 1000 --na --senders 2"""
import ctypes, os, socket, subprocess, sys, time, struct, re

import argparse
ap = argparse.ArgumentParser()
ap.add_argument("routers", type=int)
ap.add_argument("--wait", type=float, default=2.0, help="seconds after the uplink forwards")
ap.add_argument("--uplink-first", action="store_true", help="enslave the uplink after the taps (first in flood order)")
ap.add_argument("--na", action="store_true", help="also an unsolicited NA per router, as hagw sends")
ap.add_argument("--senders", type=int, default=1, help="processes sending (one per core)")
ap.add_argument("--distinct", action="store_true",
                help="each router its own addresses (hagw-bench gives all the same ones)")
a = ap.parse_args()
N = a.routers; WAIT = a.wait; P = f"lbp{os.getpid()}"
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def v4(i): return f"10.{i >> 8}.{i & 0xff}.1" if a.distinct else "203.0.113.10"
def v6(i): return f"2001:db8::{i + 1:x}" if a.distinct else "2001:db8::10"
def na(m, i):
    src = socket.inet_pton(socket.AF_INET6, v6(i)); dst = socket.inet_pton(socket.AF_INET6, "ff02::1")
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + src + bytes([2, 1]) + m
    ck = csum(src + dst + struct.pack("!IxxxB", len(body), 58) + body)
    body = body[:2] + struct.pack("!H", ck) + body[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + src + dst
    return bytes.fromhex("333300000001") + m + b"\x86\xdd" + ip6 + body
libc = ctypes.CDLL("libc.so.6", use_errno=True)
def sh(cmd, ns=None, inp=None):
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    return subprocess.run(full, input=inp, text=True, check=True, capture_output=True).stdout
def batch(lines, ns=None):
    sh(["ip", "-batch", "-"] if ns is None else ["ip", "-n", ns, "-batch", "-"], None, "\n".join(lines) + "\n")
node, tor = f"{P}-node", f"{P}-tor"
r = lambda i: f"{P}-r{i}"
mac = lambda i: f"fa:16:3e:02:{i>>8:02x}:{i&0xff:02x}"
try:
    batch([f"netns add {node}", f"netns add {tor}"] + [f"netns add {r(i)}" for i in range(N)])
    links = [f"link add uplink netns {node} type veth peer name up0 netns {tor}"]
    for i in range(N):
        links.append(f"link add qg-{i:05} address {mac(i)} netns {r(i)} type veth peer name tg{i:05} netns {node}")
        links.append(f"link add qr-{i:05} netns {r(i)} type veth peer name tr{i:05} netns {node}")
        links.append(f"link add ha-{i:05} netns {r(i)} type veth peer name th{i:05} netns {node}")
    batch(links)
    batch(["link set up0 up"], tor)
    br = []
    for b in ["brqext", "brqint", "brqha"]:
        br += [f"link add {b} type bridge", f"link set {b} up"]
    if not a.uplink_first: br.append("link set uplink master brqext")
    for i in range(N):
        br += [f"link set tg{i:05} master brqext", f"link set tr{i:05} master brqint", f"link set th{i:05} master brqha"]
    if a.uplink_first: br.append("link set uplink master brqext")
    batch(br, node)
    hold = ("add table bridge hagw\nadd set bridge hagw held_ports { type ifname; counter; }\n"
            "add chain bridge hagw hold { type filter hook prerouting priority -300; policy accept; }\n"
            "add rule bridge hagw hold iifname @held_ports drop\n"
            + "".join(f"add element bridge hagw held_ports {{ tg{i:05} }}\n" for i in range(N)))
    sh(["nft", "-f", "-"], node, hold)
    batch(["link set lo up", "link set uplink up"] + [f"link set t{s}{i:05} up" for i in range(N) for s in "grh"], node)
    for i in range(N):
        batch([f"link set qg-{i:05} up", "link set lo up"], r(i))
    t_up = time.time()
    while "state forwarding" not in sh(["bridge", "link", "show", "dev", "uplink"], node):
        time.sleep(0.1)
    print(f"uplink forwarding {time.time()-t_up:.1f} s after the wiring")
    time.sleep(WAIT)
    CLONE_NEWNET = 0x40000000
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    socks = []
    for i in range(N):
        fd = os.open(f"/run/netns/{r(i)}", os.O_RDONLY)
        assert libc.setns(fd, CLONE_NEWNET) == 0
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((f"qg-{i:05}", 0))
        os.close(fd)
        m = bytes.fromhex(mac(i).replace(":", ""))
        ip = socket.inet_aton(v4(i))
        frame = b"\xff" * 6 + m + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + ip + b"\xff" * 6 + ip
        socks.append((s, [frame, na(m, i)] if a.na else [frame]))
    assert libc.setns(own, CLONE_NEWNET) == 0
    release = "delete element bridge hagw held_ports { " + ", ".join(f"tg{i:05}" for i in range(N)) + " }\n"
    pcap = f"/tmp/{P}.pcap"
    cap = subprocess.Popen(["ip", "netns", "exec", tor, "tcpdump", "-i", "up0", "-Q", "in", "-U", "-w", pcap,
                            "-B", "65536", "--immediate-mode", "arp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while "listening" not in cap.stderr.readline(): pass
    time.sleep(0.3)
    t0 = time.time()
    nftp = subprocess.run(["ip", "netns", "exec", node, "nft", "-f", "-"], input=release, text=True, check=True)
    t1 = time.time()
    kids = []
    for k in range(a.senders):
        pid = os.fork()
        if pid == 0:
            for s, fs in socks[k::a.senders]:
                for f in fs: s.send(f)
            os._exit(0)
        kids.append(pid)
    for pid in kids: os.waitpid(pid, 0)
    t2 = time.time()
    time.sleep(3)
    cap.send_signal(2); print(cap.communicate()[1].strip().replace("\n", "; "))
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-tt", "-e"], capture_output=True, text=True).stdout
    os.unlink(pcap)
    seen = {}
    for line in out.splitlines():
        m = re.match(r"(\d+\.\d+) (\S+) >", line)
        if m and m.group(2).startswith("fa:16:3e:02"): seen.setdefault(m.group(2), float(m.group(1)))
    last = max(seen.values()) if seen else float("nan")
    print(f"{a}")
    print(f"{N} routers: one nft release of all {(t1-t0)*1000:.1f} ms (with ip netns exec and nft's start); "
          f"frames sent in {(t2-t1)*1000:.1f} ms more; gARPs at the ToR: {len(seen)} of {N}, last +{(last-t0)*1000:.1f} ms after t0")
    print("uplink:", " ".join(sh(["ip", "-s", "-o", "link", "show", "uplink"], node).split()[-14:]))
finally:
    names = [f"netns del {node}", f"netns del {tor}"] + [f"netns del {r(i)}" for i in range(N)]
    subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(names) + "\n", text=True)
