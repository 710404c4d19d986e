"""EmulatedNetwork: a topology spec realised with Mininet, shaped links and cgroup-limited hosts.

Layout of one link ``a-b`` (index i)::

    a [<run>-<i>a] ---- [<run>-<i>w] wire "a-b" [<run>-<i>x] ---- [<run>-<i>b] b

The *wire* is a forwarding namespace of its own, the link's bottleneck router: the rate of
a->b is a tbf on the wire's interface toward b (``x``), of b->a on its interface toward a
(``w``). Shaping in the middle of the link, not on the sender's own interface, means the
sender's TCP sees real queueing and real drops, as behind a real bottleneck, instead of
local-qdisc back-pressure and instant "retransmits". Delay, jitter and loss live in the
wire too: with netem, a netem root qdisc whose child is the tbf (delay, then rate); without
netem (this machine), an NFQUEUE delay line (queue 0 for a->b, 1 for b->a) and iptables
``statistic`` drops (their rules and the delay line's client: :mod:`emulation.wire`). The
wire routes by input port (policy routing), so it costs two rules whatever the topology's
size. Every link has a wire, so a sweep can add delay or loss to any link live. The layout
(names, veth pairs, addresses, routes) is worked out beforehand, from the spec alone, by
:mod:`emulation.plan`.

Every object carries the run id: interface names ``<run>-...``, cgroups
``testbed/<run>/<host>``, processes ``TESTBED_RUN=<run>`` in their environment; all are
recorded in the run registry before they exist, and :meth:`EmulatedNetwork.stop` (also
reached on exceptions, Ctrl-C and SIGTERM via the CLI's handler) removes them.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from topologies import DirectionSpec, HostSpec, LinkSpec, TopologySpec

from . import cgroups, process, registry, shaping, signals
from .errors import EmulationError
from .plan import directions, plan
from .probe import capabilities
from .wire import Wire, delayline_args, in_line, line_settings, rule_lines, rules_match

REPO_ROOT = Path(__file__).resolve().parent.parent
# delay lines run at real-time priority (above the optional CPU ticker's 1): a host computing at its full
# quota beside a delay line must not hold a packet past its due time
DELAYLINE_RT_PRIORITY = 10


def host_limits(h: HostSpec) -> cgroups.Limits:
    """What a host's cgroup is given for its spec."""
    return cgroups.Limits(cpus=h.cpus, memory_bytes=h.memory_bytes, cpuset=h.cpuset, cpu_period_us=h.cpu_period_us)


def _host_class():
    from mininet.node import Host

    class TestbedHost(Host):
        """A Mininet host whose shell carries the run's mark in its environment."""

        def __init__(self, name, run_id: str = "", **params):
            self.run_id = run_id
            super().__init__(name, **params)

        def _popen(self, cmd, **params):
            if cmd and cmd[0] == "mnexec" and "env" in cmd:
                i = cmd.index("env") + 1
                cmd = cmd[:i] + [f"{registry.ENV_MARK}={self.run_id}"] + cmd[i:]
            return super()._popen(cmd, **params)

    return TestbedHost


class EmulatedNetwork:
    """A running emulated network. Use as a context manager; :meth:`stop` is idempotent."""

    def __init__(self, spec: TopologySpec, run_id: str | None = None, caps: dict | None = None,
                 registry_dir: Path | None = None, cpu_tick_us: int | None = None,
                 delayline_priority: int = DELAYLINE_RT_PRIORITY, serialize: bool = True):
        """``cpu_tick_us``: run :mod:`emulation.ticker` (a real-time wake-up on every CPU at that
        interval, so that the kernel enforces CPU quotas at that grain instead of its tick) while
        any host has a CPU quota; None (the default) leaves the kernel's tick: with servers
        pacing their inferences it measured no better, and it slows every host's compute
        (``benchmarks/bench_cpu.py``). ``delayline_priority``: the delay lines' SCHED_FIFO
        priority, 0 for the normal scheduler. ``serialize`` False: shaped directions are not
        serialized packet by packet, only held to their rate by a token bucket, as before issue
        13 (its burst lets a message's first frames through at full speed): only for
        benchmarks that compare the two side by side."""
        self.spec = spec
        self.cpu_tick_us = cpu_tick_us
        self.delayline_priority = delayline_priority
        self.serialize = serialize
        self.ticker: subprocess.Popen | None = None
        self.ticker_info: dict | None = None
        self.caps = caps or capabilities()
        self.run_id = run_id or registry.new_run_id(registry_dir)
        self.registry = registry.RunRegistry(self.run_id, registry_dir)
        self.netem = bool(self.caps.get("qdiscs", {}).get("netem"))
        self.plan = plan(spec, self.run_id)
        self.mn = None
        self.nodes: dict = {}
        self.cgroups: dict[str, cgroups.HostCgroup] = {}
        self.wires: dict[str, Wire] = {}
        self.links: dict[str, LinkSpec] = {l.name: l for l in spec.links}
        self.procs: list[subprocess.Popen] = []
        self._iprs: dict = {}
        self._ipr_locks: dict[str, threading.RLock] = {}   # one request at a time per socket (a replay thread shares them)
        self._ifindex: dict[tuple[str, str], int] = {}    # (node, interface) -> its index, fixed for the run
        self._changers: dict[str, shaping.QdiscChanger] = {}   # node -> its raw netlink socket for trace steps
        # one step at a time per link: a step reads the link's two directions and writes both
        # back, so two replay threads (forward and reverse) would otherwise lose each other's
        # state (measured: the read-back then found the GSO size of a step that was undone)
        self._step_locks: dict[str, threading.Lock] = {}
        self._failures: dict[int, str] = {}     # pid -> what its death means (failures())
        self._stopped = False
        self._started = False

    # -- checks before touching anything ----------------------------------------------
    def preflight(self) -> None:
        if not self.caps["root"]:
            raise EmulationError("bringing a network up needs root: run it with sudo")
        if not self.caps.get("mnexec") or not self.caps.get("mininet"):
            raise EmulationError("Mininet is not installed (mnexec or the mininet module is missing): run scripts/setup.sh")
        problems = self._spec_problems(self.spec)
        if problems:
            raise EmulationError("; ".join(problems))

    def _spec_problems(self, spec: TopologySpec) -> list[str]:
        """What in ``spec`` this machine cannot hold (cores, memory, CPUs, qdiscs)."""
        problems = []
        cores = self.caps["cpus"]
        for h in spec.hosts:
            if h.cpus is not None and h.cpus > cores:
                problems.append(f"host {h.name}: cpus {h.cpus} exceeds the {cores:g} cores this machine gives us")
            if h.memory_bytes is not None and h.memory_bytes > self.caps["memory_bytes"]:
                problems.append(f"host {h.name}: memory {h.memory_bytes} B exceeds this machine's {self.caps['memory_bytes']} B")
            if h.cpuset is not None:
                bad = sorted(set(h.cpuset) - set(os.sched_getaffinity(0)))
                if bad:
                    problems.append(f"host {h.name}: cpuset CPUs {bad} do not exist here (have {sorted(os.sched_getaffinity(0))})")
        for link in spec.links:
            for src, dst, d in directions(link):
                problems += [f"link {link.name} {src}->{dst}: {p}" for p in self._direction_problems(d)]
        return problems

    def _direction_problems(self, d: DirectionSpec) -> list[str]:
        out = []
        if d.rate_bps is not None:
            try:
                shaping.tbf_params(d)
            except shaping.ShapingError as e:
                out.append(str(e))
            if not self.caps.get("qdiscs", {}).get("tbf"):
                out.append("bandwidth requested but this kernel has no tbf qdisc")
        if (d.delay_ms or d.jitter_ms) and self.caps["delay_mechanism"] not in ("netem", "nfqueue"):
            out.append(f"delay {d.delay_ms}ms requested: kernel has no netem and NFQUEUE is unavailable "
                       "(install iptables with the NFQUEUE target, or leave delay at 0)")
        if d.loss and self.caps["loss_mechanism"] not in ("netem", "iptables-statistic"):
            out.append(f"loss {d.loss:.4%} requested: kernel has no netem and iptables 'statistic' is unavailable")
        return out

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "EmulatedNetwork":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._started:
            return
        self.preflight()
        self._started = True
        self.registry.create()
        try:
            self._build()
            problems = self.verify()
            if problems:
                raise EmulationError("read-back differs from the spec: " + "; ".join(problems))
        except BaseException:
            self.stop()
            raise

    def _build(self) -> None:
        from mininet.net import Mininet

        host_cls = _host_class()
        self.mn = Mininet(controller=None, switch=None, build=False, autoSetMacs=False, waitConnected=False)
        for name in self.plan.nodes:
            node = self.mn.addHost(name, cls=host_cls, run_id=self.run_id, ip=None)
            self.nodes[name] = node
            self.registry.add_process(node.pid, f"shell:{name}")
        self.registry.add_interfaces([i for v in self.plan.veths for i in (v.if_a, v.if_b)])
        for v in self.plan.veths:
            self.mn.addLink(self.nodes[v.a], self.nodes[v.b], intfName1=v.if_a, intfName2=v.if_b)
        for h in self.spec.hosts:
            cg = cgroups.HostCgroup(self.run_id, h.name, self.caps["cgroup_version"])
            self.registry.add_cgroups(cg.paths)
            cg.create(host_limits(h))
            cg.join(self.nodes[h.name].pid)  # the host's shell, and so all it starts, is limited
            self.cgroups[h.name] = cg
        self._ensure_ticker()
        self._address_and_route()
        for link in self.spec.links:
            name, if_a, if_b = self.plan.wires[link.name]
            self.wires[link.name] = Wire(name, if_a, if_b)
            self._apply_link(link)

    @contextlib.contextmanager
    def _ipr(self, node: str):
        """A netlink socket inside ``node``'s namespace, opened once and kept for the run; held
        by one thread at a time (a trace's replay thread changes links beside the caller)."""
        from pyroute2 import IPRoute

        lock = self._ipr_locks.setdefault(node, threading.RLock())
        with lock:
            if node not in self._iprs:
                self._iprs[node] = IPRoute(netns=f"/proc/{self.nodes[node].pid}/ns/net")
            yield self._iprs[node]

    def _index(self, ipr, node: str, ifname: str) -> int:
        """``ifname``'s index in ``node``'s namespace (looked up once: a lookup is a netlink round trip)."""
        key = (node, ifname)
        if key not in self._ifindex:
            self._ifindex[key] = ipr.link_lookup(ifname=ifname)[0]
        return self._ifindex[key]

    def _address_and_route(self) -> None:
        for node in self.plan.nodes:
            veths = self.plan.veths_of(node)
            with self._ipr(node) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                for v in veths:
                    ifname, addr = v.end(node)
                    idx = ipr.link_lookup(ifname=ifname)[0]
                    ipr.addr("add", index=idx, address=addr, prefixlen=24)
                    ipr.link("set", index=idx, state="up")
                    # tell Mininet too, so its CLI can write `mobile ping cloud`
                    intf = self.nodes[node].intf(ifname)
                    intf.ip, intf.prefixLen = addr, 24
                wire = next((w for w in self.plan.wires.values() if w[0] == node), None)
                if wire is not None:
                    # a wire forwards whatever enters one port out of the other: two policy rules
                    for table, (in_veth, out_veth) in ((100, (veths[0], veths[1])), (101, (veths[1], veths[0]))):
                        in_if = in_veth.end(node)[0]
                        gw = out_veth.end(out_veth.other(node))[1]
                        ipr.route("add", dst="0.0.0.0/0", gateway=gw, table=table)
                        ipr.rule("add", table=table, priority=table, iifname=in_if)
                elif len(veths) == 1:
                    v = veths[0]
                    ipr.route("add", dst="0.0.0.0/0", gateway=v.end(v.other(node))[1])
                else:
                    for k, (gw, out_if) in sorted(self.plan.next_hops(node).items()):
                        ipr.route("add", dst=str(self.plan.veths[k].subnet), gateway=gw,
                                  oif=ipr.link_lookup(ifname=out_if)[0])
            if len(veths) > 1:
                self.nodes[node].cmd("sysctl -qw net.ipv4.ip_forward=1")

    # -- links --------------------------------------------------------------------------
    def _apply_link(self, link: LinkSpec) -> None:
        for src, dst, d in directions(link):
            node, ifname = self.plan.shaped_if[(src, dst)]
            with self._ipr(node) as ipr:
                shaping.apply(ipr, ipr.link_lookup(ifname=ifname)[0], shaping.shaping_requests(d, netem=self.netem, serialize=self.serialize))
            host_if = self._host_if(link, src)
            with self._ipr(src) as ipr:  # the sender's GSO lumps: what the serializer sends whole
                ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0], gso_max_segs=self._gso_segs(d))
        if not self.netem:
            self._apply_wire(self.wires[link.name], link)

    def _host_if(self, link: LinkSpec, host: str) -> str:
        """``host``'s own interface on ``link`` (toward the link's wire)."""
        return self.plan.veth(host, link.name).end(host)[0]

    def _gso_segs(self, d: DirectionSpec) -> int:
        # one frame per lump below ~48 Mbit/s for the delay line; at least two with netem (shaping.gso_max_segs)
        return shaping.gso_max_segs(d.rate_bps if self.serialize else None, least=2 if self.netem else 1)

    def _apply_wire(self, wire: Wire, link: LinkSpec) -> None:
        node = self.nodes[wire.name]
        if wire.delayline is None and (in_line(link.forward, self.serialize) or in_line(link.reverse, self.serialize)):
            wire.delayline = self._start_delayline(wire, link)
        if wire.delayline is not None:
            wire.set_line(link, self.serialize)
        rules = wire.rules_for(link, self.serialize)
        if rules != wire.rules:  # a wire without loss or delay needs no iptables call at all
            ipt = self.caps.get("iptables") or "iptables"
            self._ns_run(node.pid, [ipt, "-w", "-F", "FORWARD"])
            for rule in rules:
                self._ns_run(node.pid, [ipt, "-w", *rule])
            wire.rules = rules

    def _ensure_ticker(self) -> None:
        """Start the CPU ticker (emulation.ticker) once any host has a CPU quota."""
        if self.ticker is not None or self.cpu_tick_us is None:
            return
        if all(cg.limits.cpus is None for cg in self.cgroups.values()):
            return
        p, reply = self._start_helper(["emulation.ticker", "--interval-us", str(self.cpu_tick_us)], None,
                                      "cpu-ticker", "CPU ticker")
        if not reply.get("ready"):
            raise EmulationError(f"{reply.get('error', reply)}: CPU quotas would be enforced only at the kernel's "
                                 "tick (run as root from a cgroup that allows real-time tasks)")
        self.ticker, self.ticker_info = p, reply

    def _ns_run(self, pid: int, argv: list[str]) -> str:
        return process.run(argv, netns_pid=pid, run_id=self.run_id).stdout

    def _start_delayline(self, wire: Wire, link: LinkSpec) -> subprocess.Popen:
        with self._ipr(wire.name) as ipr:  # GSO super-packets are cut into frames of the wire's MTU
            mtu = min(ipr.get_links(ipr.link_lookup(ifname=i)[0])[0].get_attr("IFLA_MTU")
                      for i in (wire.if_a, wire.if_b))
        args = delayline_args(link, mtu, self.delayline_priority, self.serialize)
        p, reply = self._start_helper(args, self.nodes[wire.name].pid, f"delayline:{wire.name}", "delay line")
        if not reply.get("ready"):
            raise EmulationError(f"delay line for link {wire.name} did not start: {reply.get('error', reply)}")
        wire.sched = reply.get("sched")
        return p

    def _start_helper(self, module_args: list[str], netns_pid: int | None, label: str,
                      what: str) -> tuple[subprocess.Popen, dict]:
        """Start one of our JSON-line helpers (``python -m MODULE ARGS``) outside every host's
        cgroup, in ``netns_pid``'s namespace (None: the root one), registered for cleanup;
        returns it and its first line. In a session of its own: a terminal's Ctrl-C reaches
        the process holding the network, which ends its helpers in order (:meth:`stop`),
        not the helpers themselves (a delay line gone first would drop the link's packets)."""
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = process.popen([sys.executable, "-m", *module_args], netns_pid=netns_pid, cgroup_procs=[],
                          run_id=self.run_id, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, bufsize=1, cwd=str(REPO_ROOT),
                          start_new_session=True)
        self.registry.add_process(p.pid, label)
        self.procs.append(p)
        return p, process.read_json_line(p, timeout_s=10.0, what=what)

    # -- live changes -------------------------------------------------------------------
    def set_link(self, name: str, direction: str | None = None, **changes) -> LinkSpec:
        """Change a link's rate/delay/jitter/loss/queue in place, then read it back.

        ``direction``: None (both), "forward" (a->b) or "reverse" (b->a). ``changes`` take
        DirectionSpec field names (rate_bps, delay_ms, jitter_ms, loss, queue_bytes).
        """
        link = self._link(name)
        bad = set(changes) - set(DirectionSpec.__dataclass_fields__)
        if bad:
            raise EmulationError(f"unknown link setting(s) {sorted(bad)}; allowed: {sorted(DirectionSpec.__dataclass_fields__)}")
        if direction not in (None, "forward", "reverse"):
            raise EmulationError(f"direction must be forward, reverse or omitted, not {direction!r}")
        fwd = replace(link.forward, **changes) if direction in (None, "forward") else link.forward
        rev = replace(link.reverse, **changes) if direction in (None, "reverse") else link.reverse
        return self._replace_link(replace(link, forward=fwd, reverse=rev))

    def step_link(self, name: str, direction: str, **changes) -> str:
        """Change one direction of a running link as fast as this machine allows: a trace's
        step (:mod:`emulation.replay`). Only the parameters that shape that direction are
        changed in place, each with one message on a socket or pipe kept open: netem's and
        the tbf's (``tc qdisc change``, compiled once: :class:`emulation.shaping.QdiscChanger`),
        or the delay line's setting of its queue; the serializer first when the rate goes
        down, the tbf behind it first when it goes up, so that the backstop never holds the
        link below its new rate. Nothing is read back here: :meth:`check_direction` does that,
        off the step's critical path.

        Returns ``"fast"``; ``"same"`` when nothing changes; ``"full"`` when the change needs
        other qdiscs or wire rules (loss on a machine without netem, a direction that was not
        shaped or delayed before): it then goes the way of :meth:`set_link`, read-back included.
        Safe to call from one thread per direction (a lock per link)."""
        with self._step_locks.setdefault(self._link(name).name, threading.Lock()):
            return self._step_link(name, direction, changes)

    def _step_link(self, name: str, direction: str, changes: dict) -> str:
        link, old, new, reqs, in_place = self._plan_step(name, direction, changes)
        if new == old:
            return "same"
        new_link = replace(link, **{direction: new})
        if not in_place:
            self._replace_link(new_link)
            return "full"
        src = link.a if direction == "forward" else link.b
        node, ifname = self.plan.shaped_if[(src, link.b if src == link.a else link.a)]

        def qdisc(r: shaping.TcRequest):
            def change():
                with self._changer(node) as changer:
                    changer.change(self._ifindex[(node, ifname)], r)
            return change

        if self.netem:      # netem serializes (its rate) and delays; the tbf below it is the backstop
            serializer, backstop = [qdisc(r) for r in reqs if r.kind == "netem"], [qdisc(r) for r in reqs if r.kind == "tbf"]
        else:
            wire, q = self.wires[link.name], (0 if direction == "forward" else 1)
            serializer = [lambda: wire.call({"op": "set", "queue": q, **line_settings(new, self.serialize)})]
            backstop = [qdisc(r) for r in reqs]
        slower = (new.rate_bps or 0) < (old.rate_bps or 0)
        for change in (serializer + backstop) if slower else (backstop + serializer):
            change()
        if self._gso_segs(new) != self._gso_segs(old):
            with self._changer(src) as changer, self._ipr(src) as ipr:   # both ready after prepare_step
                changer.set_gso(self._index(ipr, src, self._host_if(link, src)), self._gso_segs(new))
        self.links[link.name] = new_link
        return "fast"

    def prepare_step(self, name: str, direction: str, **changes) -> None:
        """Check that :meth:`step_link` can make this change to the link as it is now (an
        error says why not, as a step would), and compile its kernel requests ahead, so that
        the step itself costs only their sending. Changes nothing."""
        link, old, new, reqs, in_place = self._plan_step(name, direction, changes)
        if not in_place:
            return
        src = link.a if direction == "forward" else link.b
        node, ifname = self.plan.shaped_if[(src, link.b if src == link.a else link.a)]
        with self._changer(node) as changer:
            for r in reqs:
                changer.compile(self._ifindex[(node, ifname)], r)
        # the sender's GSO size, which a step across ~48 Mbit/s changes: its socket and message ready
        with self._changer(src) as changer, self._ipr(src) as ipr:
            changer.compile_gso(self._index(ipr, src, self._host_if(link, src)), self._gso_segs(new))

    def _plan_step(self, name: str, direction: str, changes: dict):
        """(link, its direction now, after the change, the qdisc requests after it, whether the
        change can be made in place); a change the link cannot take is an error."""
        link = self._link(name)
        if direction not in ("forward", "reverse"):
            raise EmulationError(f"direction must be forward or reverse, not {direction!r}")
        bad = set(changes) - set(DirectionSpec.__dataclass_fields__)
        if bad:
            raise EmulationError(f"unknown link setting(s) {sorted(bad)}; allowed: {sorted(DirectionSpec.__dataclass_fields__)}")
        old = getattr(link, direction)
        new = replace(old, **changes)
        if new.jitter_ms > new.delay_ms:
            raise EmulationError(f"link {link.name}: jitter {new.jitter_ms}ms exceeds delay {new.delay_ms}ms")
        problems = self._direction_problems(new)
        if problems:
            raise EmulationError(f"link {link.name}: " + "; ".join(problems))
        reqs = shaping.shaping_requests(new, self.netem, self.serialize)
        reqs_old = shaping.shaping_requests(old, self.netem, self.serialize)
        in_place = bool(reqs) and [(r.kind, r.handle) for r in reqs] == [(r.kind, r.handle) for r in reqs_old]
        if not self.netem:
            wire = self.wires[link.name]
            in_place = (in_place and wire.line_running
                        and wire.rules_for(replace(link, **{direction: new}), self.serialize) == wire.rules)
        return link, old, new, reqs, in_place

    @contextlib.contextmanager
    def _changer(self, node: str):
        """``node``'s :class:`~emulation.shaping.QdiscChanger` (opened once), under the
        namespace's lock, with the indexes of its shaped interfaces looked up."""
        with self._ipr(node) as ipr:
            if node not in self._changers:
                self._changers[node] = shaping.QdiscChanger(f"/proc/{self.nodes[node].pid}/ns/net")
                for (n, ifname) in self.plan.shaped_if.values():
                    if n == node:
                        self._index(ipr, node, ifname)
            yield self._changers[node]

    def check_direction(self, name: str, direction: str) -> list[str]:
        """Read back what shapes one direction of ``name`` (its qdiscs, its sender's GSO size,
        its delay line's setting) against the link as last set; the differences, empty when
        none. No iptables call: cheap enough (well under a millisecond) after every trace step."""
        link = self._link(name)
        src, dst = (link.a, link.b) if direction == "forward" else (link.b, link.a)
        return self._verify_direction(link, src, dst)

    def _replace_link(self, new: LinkSpec) -> LinkSpec:
        for d in (new.forward, new.reverse):
            if d.jitter_ms > d.delay_ms:
                raise EmulationError(f"link {new.name}: jitter {d.jitter_ms}ms exceeds delay {d.delay_ms}ms")
            probs = self._direction_problems(d)
            if probs:
                raise EmulationError(f"link {new.name}: " + "; ".join(probs))
        self._apply_link(new)
        self.links[new.name] = new
        problems = self._verify_link(new)
        if problems:
            raise EmulationError("read-back after live change differs: " + "; ".join(problems))
        return new

    def same_shape(self, spec: TopologySpec) -> bool:
        """Whether ``spec`` has this network's hosts and links (names and ends), so that it
        can be reached by live changes (`reconfigure`) instead of a rebuild."""
        return spec.shape() == self.spec.shape()

    def reconfigure(self, spec: TopologySpec) -> list[str]:
        """Bring the running network to ``spec`` (same shape) by live changes of the links and
        host limits that differ, each read back; returns what changed (``link NAME``,
        ``host NAME``). The spec is checked whole before anything is changed."""
        if not self.same_shape(spec):
            raise EmulationError(f"topology {spec.name} has other hosts or links than the running network; "
                                 "it needs a new network")
        problems = self._spec_problems(spec)
        if problems:
            raise EmulationError("; ".join(problems))
        changed = []
        for link in spec.links:
            if link != self.links[link.name]:
                self._replace_link(link)
                changed.append(f"link {link.name}")
        for h in spec.hosts:
            limits = host_limits(h)
            if limits != self.cgroups[h.name].limits:
                self.set_host(h.name, **asdict(limits))
                changed.append(f"host {h.name}")
        self.spec = spec
        return changed

    def set_host(self, name: str, **changes) -> cgroups.Limits:
        """Change a host's cpus / memory_bytes / cpuset / cpu_period_us live, then read it back."""
        if name not in self.cgroups:
            raise EmulationError(f"unknown host {name!r}; hosts: {', '.join(self.plan.hosts)}")
        allowed = list(cgroups.Limits.__dataclass_fields__)
        bad = set(changes) - set(allowed)
        if bad:
            raise EmulationError(f"unknown host setting(s) {sorted(bad)}; allowed: {', '.join(allowed)}")
        new = replace(self.cgroups[name].limits, **changes)
        if new.cpus is not None and new.cpus > self.caps["cpus"]:
            raise EmulationError(f"host {name}: cpus {new.cpus} exceeds the {self.caps['cpus']:g} cores here")
        cg = self.cgroups[name]
        cg.apply(new)
        self._ensure_ticker()
        problems = cg.verify()
        if problems:
            raise EmulationError("read-back after live change differs: " + "; ".join(problems))
        return new

    def _link(self, name: str) -> LinkSpec:
        if name in self.links:
            return self.links[name]
        a, _, b = name.partition("-")
        if f"{b}-{a}" in self.links:
            return self.links[f"{b}-{a}"]
        raise EmulationError(f"unknown link {name!r}; links: {', '.join(self.links)}")

    # -- read-back ----------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Read back every qdisc, wire rule, delay setting and cgroup; list the differences."""
        problems: list[str] = []
        for link in self.links.values():
            problems += self._verify_link(link)
        for cg in self.cgroups.values():
            problems += cg.verify()
        if self.ticker is not None and self.ticker.poll() is not None:
            problems.append(f"the CPU ticker exited ({self.ticker.returncode}): CPU quotas fall back to the kernel's tick")
        elif self.ticker is not None:
            problems += [f"CPU ticker {p}" for p in realtime_problems(self.ticker_info["tids"], self.ticker_info["priority"])]
        return problems

    def _verify_direction(self, link: LinkSpec, src: str, dst: str) -> list[str]:
        """The differences between one direction's spec and its sender's GSO size, its qdiscs
        and (without netem) its delay line's setting, as read back now."""
        problems = []
        d = link.direction(src, dst)
        segs = self._read_gso_segs(link, src)
        if segs != self._gso_segs(d):
            problems.append(f"link {link.name} {src}->{dst}: {src}'s gso_max_segs reads {segs}, "
                            f"asked {self._gso_segs(d)}")
        got = self._read_direction(src, dst)
        problems += [f"link {link.name} {src}->{dst}: {p}"
                     for p in shaping.verify(shaping.shaping_requests(d, self.netem, self.serialize), got)]
        wire = self.wires.get(link.name)
        if not self.netem and wire is not None and wire.line_running:
            q = 0 if src == link.a else 1
            s = wire.line_stats().get(str(q)) or {}
            want = line_settings(d, self.serialize)
            held = {k: s.get(k, "missing") for k in want}
            if held != want:
                problems.append(f"link {link.name} queue {q}: delay line holds {held}, expected {want}")
        return problems

    def _verify_link(self, link: LinkSpec) -> list[str]:
        problems = []
        for src, dst, _ in directions(link):
            problems += self._verify_direction(link, src, dst)
        if not self.netem:
            wire = self.wires[link.name]
            ipt = self.caps.get("iptables") or "iptables"
            have = self._ns_run(self.nodes[wire.name].pid, [ipt, "-w", "-S", "FORWARD"])
            want = rule_lines(wire.rules_for(link, self.serialize))
            got_lines = [l for l in have.splitlines() if l.startswith("-A FORWARD")]
            if not rules_match(want, got_lines):
                problems.append(f"link {link.name}: wire rules read {got_lines}, expected {want}")
            if wire.delayline is not None and wire.delayline.poll() is not None:
                problems.append(f"link {link.name}: delay line exited ({process.exit_text(wire.delayline.returncode)})")
            elif wire.delayline is not None:
                if self.delayline_priority:
                    problems += [f"link {link.name}: delay line {p}"
                                 for p in realtime_problems([wire.delayline.pid], self.delayline_priority)]
        return problems

    def _read_gso_segs(self, link: LinkSpec, host: str) -> int | None:
        with self._ipr(host) as ipr:
            return ipr.get_links(self._index(ipr, host, self._host_if(link, host)))[0].get_attr("IFLA_GSO_MAX_SEGS")

    def _read_direction(self, src: str, dst: str) -> dict:
        """The qdiscs that shape src->dst, as the kernel reports them."""
        node, ifname = self.plan.shaped_if[(src, dst)]
        with self._ipr(node) as ipr:
            return shaping.read_back(ipr, self._index(ipr, node, ifname))

    def line_stats(self, link: str, src: str) -> dict | None:
        """The delay line's counters for one direction of ``link`` (the one ``src`` sends into),
        since the line started: packets, bytes, drops (queue full, ENOBUFS, the kernel's queue),
        how late batches left (``late_us_mean`` / ``late_us_max``). None where no delay line
        carries that direction (netem, or nothing to delay or serialize)."""
        spec = self._link(link)
        wire = self.wires.get(spec.name)
        if wire is None or not wire.line_running:
            return None
        q = 0 if src == spec.a else 1
        if not in_line(spec.forward if q == 0 else spec.reverse, self.serialize):
            return None
        return dict(wire.line_stats().get(str(q)) or {})

    def wait_idle(self, link: str | None = None, timeout_s: float = 10.0) -> float:
        """Wait until nothing is queued on either direction of ``link`` (every link when None):
        its shapers' qdiscs and its delay line; returns the seconds waited. A measurement of
        delay taken while a flow's queue drains measures the queue, not the link."""
        links = [self._link(link)] if link is not None else list(self.links.values())
        t0 = time.monotonic()
        while True:
            queued = 0
            for link_spec in links:
                for src, dst, _ in directions(link_spec):
                    node, ifname = self.plan.shaped_if[(src, dst)]
                    with self._ipr(node) as ipr:
                        queued += shaping.backlog(ipr, ipr.link_lookup(ifname=ifname)[0])[0]
                wire = self.wires.get(link_spec.name)
                if wire is not None and wire.line_running:
                    queued += sum(int(q.get("held", 0) or 0) for q in wire.line_stats().values())
            waited = time.monotonic() - t0
            if queued == 0:
                return waited
            if waited > timeout_s:
                names = ", ".join(l.name for l in links)
                raise EmulationError(f"link(s) {names} still hold {queued} packets after {timeout_s:g}s")
            time.sleep(0.01)

    def applied(self) -> dict:
        """What the kernel holds now, per link direction and host (for printing / JSON)."""
        links = []
        for link in self.links.values():
            for src, dst, d in directions(link):
                tbf = self._read_direction(src, dst).get("tbf")
                links.append({"link": link.name, "direction": f"{src}->{dst}",
                              "interface": self.plan.shaped_if[(src, dst)][1],
                              "bandwidth_bps": tbf["rate"] * 8 if tbf else None,
                              "queue_bytes": tbf["limit"] if tbf else None,
                              "delay_ms": d.delay_ms, "jitter_ms": d.jitter_ms, "loss": d.loss,
                              "delay_mechanism": "netem" if self.netem else ("nfqueue" if d.delay_ms or d.jitter_ms else "-"),
                              "serialization": None if d.rate_bps is None or not self.serialize else
                              ("netem rate" if self.netem else "delay line"),
                              "gso_max_segs": self._read_gso_segs(link, src),
                              "delay_line_sched": None if self.netem or self.wires[link.name].sched is None else
                              f"{self.wires[link.name].sched['policy']} {self.wires[link.name].sched['priority']}",
                              "loss_mechanism": "netem" if self.netem else ("iptables-statistic" if d.loss else "-")})
        hosts = []
        for name in self.plan.hosts:
            got = self.cgroups[name].read_back()
            hosts.append({"host": name, "address": self.address(name), "cpus": got.cpus,
                          "cpu_period_us": got.period_us, "memory_bytes": got.memory_bytes,
                          "cpuset": cgroups.format_cpuset(got.cpuset) if got.cpuset else None,
                          "cgroup": str(self.cgroups[name].paths[0])})
        tick = None if self.ticker_info is None else {k: self.ticker_info[k] for k in ("interval_us", "policy", "priority")}
        return {"run_id": self.run_id, "topology": self.spec.name, "links": links, "hosts": hosts, "cpu_tick": tick}

    # -- using the hosts ----------------------------------------------------------------
    def address(self, host: str, link: str | None = None) -> str:
        """``host``'s address on ``link`` (None: its first): see :meth:`emulation.plan.Plan.address`."""
        return self.plan.address(host, link)

    def addresses(self, host: str) -> list[str]:
        """Every address of ``host``, one per link it is on."""
        return self.plan.addresses(host)

    def popen(self, host: str, argv: list[str], limited: bool = True, **kw) -> subprocess.Popen:
        """Start a process inside ``host``: in its cgroup before it runs, then in its namespace.

        ``limited=False`` leaves out the cgroup (measurement tools that must not be throttled).
        """
        if host not in self.cgroups:
            raise EmulationError(f"unknown host {host!r}; hosts: {', '.join(self.plan.hosts)}")
        procs = self.cgroups[host].procs_files() if limited else []
        p = process.popen(argv, netns_pid=self.nodes[host].pid, cgroup_procs=procs, run_id=self.run_id, **kw)
        self.registry.add_process(p.pid, f"{host}:{Path(argv[0]).name}")
        self.procs.append(p)
        return p

    def run(self, host: str, argv: list[str], timeout: float = 60.0, limited: bool = True) -> subprocess.CompletedProcess:
        p = self.popen(host, argv, limited=limited, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise EmulationError(f"{' '.join(argv)} on {host} ran past {timeout:g}s") from None
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    @property
    def hosts_limits(self) -> dict[str, cgroups.Limits]:
        """The limits each host's cgroup was last given (read back by :meth:`verify`)."""
        return {name: cg.limits for name, cg in self.cgroups.items()}

    def oom_kills(self, host: str) -> int:
        return self.cgroups[host].oom_kills()

    # -- health -------------------------------------------------------------------------
    def failures(self) -> list[str]:
        """What has died of the processes the running network needs, one line each naming
        what it served, its pid, its exit status and its last line on stderr: each link's
        delay line (without it the link drops every packet it should delay or serialize:
        the NFQUEUE rules have no bypass, see docs/emulation.md), the CPU ticker, and the
        shells that hold the hosts' and wires' namespaces. Empty while all of them run. A
        poll per process: cheap enough to call every fraction of a second while a cell runs."""
        found = []
        for name, wire in self.wires.items():
            if wire.delayline is not None:
                found.append((wire.delayline, f"link {name}'s delay line",
                              "every packet it should delay or serialize is dropped"))
        if self.ticker is not None:
            found.append((self.ticker, "the CPU ticker", "CPU quotas fall back to the kernel's tick"))
        wires = {w.name: link for link, w in self.wires.items()}
        for name, node in self.nodes.items():
            if node.shell is not None:
                what = f"link {wires[name]}'s wire" if name in wires else f"host {name}"
                found.append((node.shell, f"{what} shell", "its namespace may be gone"))
        out = []
        for p, what, meaning in found:
            if p.poll() is None:
                continue
            if p.pid not in self._failures:      # its stderr is read once: keep what it said
                tail = process.stderr_tail(p)
                self._failures[p.pid] = (f"{what} (pid {p.pid}) died ({process.exit_text(p.returncode)}): {meaning}"
                                         + (f"; its last words: {tail}" if tail else ""))
            out.append(self._failures[p.pid])
        return out

    # -- teardown -----------------------------------------------------------------------
    def stop(self) -> None:
        """Remove everything the network made: its processes, the hosts' shells (and with them
        the namespaces and links), the cgroups, then the registry record.

        Idempotent and resumable: the network counts as stopped only once all of it is gone,
        so a stop that failed part-way finishes the rest when called again (each step skips
        what is already gone). SIGINT, SIGTERM and SIGHUP that arrive meanwhile are held and
        acted on once it is done (:func:`emulation.signals.deferred`): a second Ctrl-C cannot
        cut it short. Bounded: each wait gives up after a few seconds (SIGKILL, then an
        error naming what is left for `testbed clean`)."""
        if self._stopped:
            return
        with signals.deferred():
            self._stop_processes()
            for ipr in [*self._iprs.values(), *self._changers.values()]:
                ipr.close()
            self._iprs.clear()
            self._changers.clear()
            errors = self._stop_shells()
            # whatever is still inside a host's cgroup was started on that host, so it is ours
            for cg in self.cgroups.values():
                cg.kill_all()
            try:
                cgroups.remove_run_cgroups(self.run_id, version=self.caps.get("cgroup_version"))
            except cgroups.CgroupError as e:
                errors.append(str(e))
            if errors:
                raise EmulationError("teardown incomplete (run `testbed clean`): " + "; ".join(errors))
            self.registry.remove()
            self._stopped = True

    def _stop_processes(self) -> None:
        """End every process the network started (helpers, and what was started on hosts)."""
        for p in self.procs:
            if p.poll() is None:
                if p.stdin:
                    try:
                        p.stdin.close()  # delay lines exit on EOF
                    except OSError:
                        pass
                p.terminate()
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _stop_shells(self) -> list[str]:
        """End the hosts' shells (Mininet's shells die on SIGHUP) and wait until they are
        gone, so that their namespaces and cgroups are empty; what could not be ended."""
        errors = []
        if self.mn is None:
            return errors
        for node in self.nodes.values():
            if node.shell is None:
                continue        # ended by an earlier stop
            try:
                node.terminate()
            except Exception as e:  # noqa: BLE001 - keep tearing down the rest
                if registry.proc_starttime(node.pid) is not None:
                    errors.append(f"{node.name}: {e}")
        deadline = time.monotonic() + 3.0
        for node in self.nodes.values():
            while registry.proc_starttime(node.pid) is not None and time.monotonic() < deadline:
                if node.shell is not None and node.shell.poll() is not None:
                    break
                time.sleep(0.01)
        return errors


def realtime_problems(tids: list[int], priority: int) -> list[str]:
    """Read back that each thread runs at SCHED_FIFO ``priority`` (from the kernel, not its word)."""
    out = []
    for tid in tids:
        try:
            policy, prio = os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority
        except OSError as e:
            out.append(f"thread {tid}: cannot read its scheduling policy ({e.strerror})")
            continue
        if policy != os.SCHED_FIFO or prio != priority:
            out.append(f"thread {tid} runs at policy {policy} priority {prio}, expected SCHED_FIFO {priority}")
    return out
