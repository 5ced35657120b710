import assert from 'node:assert/strict'
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, writeFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import fc from 'fast-check'
import {
  allocateAddress,
  attachContainer,
  BRIDGE,
  bridgeAddress,
  bridgeMac,
  containerMac,
  detachContainer,
  ensureBridge,
  formatIPv4,
  isContainerAddress,
  isKm1sVeth,
  listContainerNetns,
  listKm1sVeths,
  type NetnsState,
  netnsName,
  parseIPv4,
  parseNetnsState,
  parseSubnet,
  planAttach,
  planBridge,
  planIsEmpty,
  vethName,
} from '../../../src/network/container-net.ts'

const run = promisify(execFile)

function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: Error & { code?: string }) => {
    assert.equal(err.code, code, err.message)
    assert.match(err.message, /^[A-Z].*\.$/, 'one sentence')
    return true
  })
}

const u32 = fc.integer({ min: 0, max: 0xffffffff })
const aligned = fc.record({ n: u32, prefix: fc.integer({ min: 16, max: 30 }) }).map(({ n, prefix }) => {
  const size = 2 ** (32 - prefix)
  return { base: n - (n % size), prefix, size }
})

describe('addresses', () => {
  it('parses and formats IPv4 addresses canonically', () => {
    fc.assert(fc.property(u32, (n) => parseIPv4(formatIPv4(n)) === n))
    for (const bad of [
      '',
      '1.2.3',
      '1.2.3.4.5',
      '01.2.3.4',
      '1.2.3.256',
      ' 1.2.3.4',
      '1.2.3.4/24',
      '::1',
      'a.b.c.d',
    ]) {
      assert.equal(parseIPv4(bad), undefined, bad)
    }
    assert.equal(parseIPv4('255.255.255.255'), 0xffffffff)
  })

  it('accepts aligned IPv4 subnets from /16 to /30', () => {
    assert.deepEqual(parseSubnet('10.42.0.0/24'), {
      cidr: '10.42.0.0/24',
      base: 0x0a2a0000,
      prefix: 24,
      size: 256,
    })
    fc.assert(
      fc.property(aligned, ({ base, prefix, size }) => {
        const s = parseSubnet(`${formatIPv4(base)}/${prefix}`)
        return s.base === base && s.prefix === prefix && s.size === size
      }),
    )
  })

  it('rejects anything else with ERR_INVALID_SUBNET', () => {
    for (const bad of [
      '10.42.0.0',
      '10.42.0.0/',
      '10.42.0.0/8',
      '10.42.0.0/15',
      '10.42.0.0/31',
      '10.42.0.0/32',
      '10.42.0.0/024',
      '10.42.0.5/24',
      '10.42.0.0/ 24',
      '010.42.0.0/24',
      '10.42.256.0/24',
      'fd00::/64',
      ' 10.42.0.0/24',
    ]) {
      throwsCode(() => parseSubnet(bad), 'ERR_INVALID_SUBNET')
    }
    assert.throws(() => parseSubnet('10.42.0.5/24'), /write 10\.42\.0\.0\/24/)
  })

  it('gives the bridge the .1 address', () => {
    assert.equal(bridgeAddress('10.42.0.0/24'), '10.42.0.1')
    assert.equal(bridgeAddress('10.42.0.0/16'), '10.42.0.1')
    assert.equal(bridgeAddress(parseSubnet('192.168.7.4/30')), '192.168.7.5')
  })

  it('allocates the lowest free container address from .2 up', () => {
    const s = '10.42.0.0/24'
    assert.equal(allocateAddress(s, new Set()), '10.42.0.2')
    assert.equal(allocateAddress(s, new Set(['10.42.0.2', '10.42.0.4'])), '10.42.0.3')
    assert.equal(
      allocateAddress(s, new Set(['10.42.0.2']), '10.42.0.77'),
      '10.42.0.77',
      'a free preferred one',
    )
    assert.equal(
      allocateAddress(s, new Set(['10.42.0.77']), '10.42.0.77'),
      '10.42.0.2',
      'a taken preferred one',
    )
    for (const p of ['10.42.0.0', '10.42.0.1', '10.42.0.255', '10.42.1.2', 'nonsense', '10.42.0.02']) {
      assert.equal(allocateAddress(s, new Set(), p), '10.42.0.2', p)
    }
    assert.equal(allocateAddress(s, new Set(['x', '10.42.1.2', '10.42.0.1'])), '10.42.0.2', 'junk is ignored')
    assert.equal(allocateAddress('10.42.0.0/30', new Set()), '10.42.0.2')
    throwsCode(() => allocateAddress('10.42.0.0/30', new Set(['10.42.0.2'])), 'ERR_SUBNET_FULL')
  })

  it('fills a subnet exactly, never with network, bridge or broadcast', () => {
    fc.assert(
      fc.property(fc.integer({ min: 24, max: 30 }), fc.integer({ min: 0, max: 255 }), (prefix, third) => {
        const s = parseSubnet(`10.42.${third}.0/${prefix}`)
        const used = new Set<string>()
        for (let i = 0; i < s.size - 3; i++) {
          const ip = allocateAddress(s, used)
          assert.ok(isContainerAddress(s, ip), ip)
          assert.ok(!used.has(ip))
          used.add(ip)
        }
        throwsCode(() => allocateAddress(s, used), 'ERR_SUBNET_FULL')
      }),
      { numRuns: 30 },
    )
  })

  it('returns the preferred address when free and valid, else the lowest free one', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 26, max: 30 }),
        fc.array(fc.integer({ min: 0, max: 63 }), { maxLength: 70 }),
        fc.option(fc.integer({ min: -2, max: 66 }), { nil: undefined }),
        (prefix, usedOffsets, prefOffset) => {
          const s = parseSubnet(`10.42.7.0/${prefix}`)
          const used = new Set(usedOffsets.map((o) => formatIPv4(s.base + o)))
          const preferred = prefOffset === undefined ? undefined : formatIPv4(s.base + prefOffset)
          const free: string[] = []
          for (let n = s.base + 2; n < s.base + s.size - 1; n++)
            if (!used.has(formatIPv4(n))) free.push(formatIPv4(n))
          let got: string | undefined
          try {
            got = allocateAddress(s, used, preferred)
          } catch {
            got = undefined
          }
          if (free.length === 0) return got === undefined
          if (preferred !== undefined && free.includes(preferred)) return got === preferred
          return got === free[0]
        },
      ),
    )
  })

  it('gives the bridge a fixed, locally administered unicast MAC', () => {
    const mac = bridgeMac('10.42.0.0/24')
    assert.match(mac, /^02(:[0-9a-f]{2}){5}$/)
    assert.equal(bridgeMac('10.42.0.0/24'), mac)
    assert.notEqual(bridgeMac('10.42.1.0/24'), mac)
  })
})

describe('names', () => {
  it('names the veth km1s + 11 hex digits of the instance and container', () => {
    const name = vethName('a1b2c3', 'web')
    assert.equal(name.length, 15)
    assert.equal(name, `km1s${createHash('sha256').update('a1b2c3/web').digest('hex').slice(0, 11)}`)
    assert.ok(isKm1sVeth(name))
    fc.assert(
      fc.property(
        fc.stringMatching(/^[0-9a-f]{6}$/),
        fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/),
        (instance, container) => {
          const v = vethName(instance, container)
          return v.length === 15 && isKm1sVeth(v) && v === vethName(instance, container)
        },
      ),
    )
    for (const other of [
      BRIDGE,
      'km1s0123456789',
      'km1s0123456789ab',
      'km1s0123456789A',
      'eth0',
      'vethabc',
    ]) {
      assert.equal(isKm1sVeth(other), false, other)
    }
  })

  it('names the namespace km1s-<instance>-<container> and validates both parts', () => {
    assert.equal(netnsName('a1b2c3', 'web-1'), 'km1s-a1b2c3-web-1')
    for (const [instance, container] of [
      ['a1b2c', 'web'],
      ['A1B2C3', 'web'],
      ['a1b2c3x', 'web'],
      ['a1b2c3', 'Web'],
      ['a1b2c3', '-web'],
      ['a1b2c3', 'web-'],
      ['a1b2c3', 'a'.repeat(41)],
      ['a1b2c3', 'we b'],
      ['a1b2c3', ''],
    ] as const) {
      throwsCode(() => netnsName(instance, container), 'ERR_INVALID_NAME')
      throwsCode(() => vethName(instance, container), 'ERR_INVALID_NAME')
    }
    assert.equal(netnsName('a1b2c3', 'a'.repeat(40)).length, 52)
  })
})

// What `ip -d -j -batch -` prints for `link show`, `addr show`, `route show default` (trimmed).
const link = (o: Record<string, unknown>) => ({
  flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'],
  mtu: 1420,
  ...o,
})
function ipOutput(links: Array<Record<string, unknown>>, routes?: Array<Record<string, unknown>>): string {
  const plain = links.map(({ addr_info: _, ...l }) => l)
  const addrs = links.map(({ ifindex, ifname, addr_info }) => ({
    ifindex,
    ifname,
    addr_info: addr_info ?? [],
  }))
  const lines = [JSON.stringify(plain), JSON.stringify(addrs)]
  if (routes) lines.push(JSON.stringify(routes))
  return `${lines.join('\n')}\n`
}
const inet = (local: string, prefixlen: number) => ({ family: 'inet', local, prefixlen, scope: 'global' })
const inet6 = (local: string) => ({ family: 'inet6', local, prefixlen: 64, scope: 'link' })
const LO_DOWN = { ifindex: 1, ifname: 'lo', flags: ['LOOPBACK'] }
const LO_UP = {
  ifindex: 1,
  ifname: 'lo',
  flags: ['LOOPBACK', 'UP', 'LOWER_UP'],
  addr_info: [inet('127.0.0.1', 8)],
}

describe('plans', () => {
  const subnet = parseSubnet('10.42.0.0/24')
  const mac = bridgeMac(subnet)
  const goodBridge = {
    ifindex: 2,
    ifname: BRIDGE,
    address: mac,
    inet6_addr_gen_mode: 'none',
    linkinfo: { info_kind: 'bridge' },
    addr_info: [inet('10.42.0.1', 24)],
  }

  it('reads the state of a namespace from ip -j, merging links and addresses', () => {
    const state = parseNetnsState(
      ipOutput([LO_UP, link(goodBridge)], [{ dst: 'default', gateway: '10.0.0.1', dev: 'x' }]),
    )
    assert.equal(state.links.length, 2)
    assert.deepEqual(state.links[1], {
      name: BRIDGE,
      ifindex: 2,
      kind: 'bridge',
      peerIndex: null,
      master: null,
      up: true,
      mac,
      addrGenMode: 'none',
      mtu: 1420,
      inet: ['10.42.0.1/24'],
      inet6: [],
    })
    assert.deepEqual(state.routes, [{ dst: 'default', gateway: '10.0.0.1', dev: 'x' }])
    assert.deepEqual(parseNetnsState(ipOutput([LO_DOWN])).routes, [])
  })

  it('makes a missing bridge, and leaves a good one alone', () => {
    const none = parseNetnsState(ipOutput([LO_UP]))
    assert.deepEqual(planBridge(none, { subnet, ipv6: true }), [
      `link add name km1s0 address ${mac} mtu 1420 type bridge`,
      'link set dev km1s0 addrgenmode none',
      'addr add 10.42.0.1/24 dev km1s0',
      'link set dev km1s0 up',
    ])
    assert.ok(!planBridge(none, { subnet, ipv6: false }).some((l) => l.includes('addrgenmode')))
    assert.deepEqual(
      planBridge(parseNetnsState(ipOutput([LO_UP, link(goodBridge)])), { subnet, ipv6: true }),
      [],
    )
  })

  it('repairs a bridge: MAC, MTU, IPv6, wrong and missing addresses, down', () => {
    const bad = {
      ...goodBridge,
      flags: ['BROADCAST', 'MULTICAST'],
      address: '36:9d:57:14:cb:6e',
      inet6_addr_gen_mode: 'eui64',
      addr_info: [inet('10.42.5.1', 24), inet6('fe80::1')],
    }
    assert.deepEqual(planBridge(parseNetnsState(ipOutput([bad])), { subnet, ipv6: true }), [
      `link set dev km1s0 address ${mac}`,
      'link set dev km1s0 mtu 1420',
      'link set dev km1s0 addrgenmode none',
      'addr del fe80::1/64 dev km1s0',
      'addr del 10.42.5.1/24 dev km1s0',
      'addr replace 10.42.0.1/24 dev km1s0',
      'link set dev km1s0 up',
    ])
    const extra = { ...goodBridge, addr_info: [inet('10.42.0.1', 24), inet('10.42.0.9', 24)] }
    assert.deepEqual(planBridge(parseNetnsState(ipOutput([link(extra)])), { subnet, ipv6: true }), [
      'addr del 10.42.0.9/24 dev km1s0',
      'addr replace 10.42.0.1/24 dev km1s0',
    ])
  })

  it('refuses a km1s0 that is not a bridge', () => {
    const dummy = { ifindex: 2, ifname: BRIDGE, linkinfo: { info_kind: 'dummy' } }
    throwsCode(
      () => planBridge(parseNetnsState(ipOutput([dummy])), { subnet, ipv6: true }),
      'ERR_BRIDGE_CONFLICT',
    )
  })

  const wanted = { netns: 'km1s-a1b2c3-web', veth: 'km1s0123456789a', subnet, ip: '10.42.0.2', ipv6: true }
  const hostWith = (...extra: Array<Record<string, unknown>>): NetnsState =>
    parseNetnsState(ipOutput([LO_UP, link(goodBridge), ...extra]))
  const hostVeth = {
    ifindex: 7,
    link_index: 2,
    ifname: wanted.veth,
    master: BRIDGE,
    inet6_addr_gen_mode: 'none',
    linkinfo: { info_kind: 'veth' },
  }
  const eth0 = {
    ifindex: 2,
    link_index: 7,
    ifname: 'eth0',
    linkinfo: { info_kind: 'veth' },
    addr_info: [inet('10.42.0.2', 24)],
  }
  const route = { dst: 'default', gateway: '10.42.0.1', dev: 'eth0' }
  const full = [
    'link set dev lo up',
    'addr replace 10.42.0.2/24 dev eth0',
    'link set dev eth0 up',
    'route replace default via 10.42.0.1 dev eth0',
  ]

  it('gives eth0 a MAC made of its address, so a container made again at one address keeps its MAC', () => {
    assert.equal(containerMac('10.42.0.2'), '02:42:0a:2a:00:02')
    assert.equal(containerMac('10.42.255.254'), '02:42:0a:2a:ff:fe')
  })

  it('attaches a fresh namespace in one host batch and one container batch', () => {
    const plan = planAttach(hostWith(), parseNetnsState(ipOutput([LO_DOWN], [])), wanted)
    assert.deepEqual(plan, {
      containerFirst: [],
      host: [
        'link add name km1s0123456789a mtu 1420 type veth peer name eth0 address 02:42:0a:2a:00:02 mtu 1420 netns km1s-a1b2c3-web',
        'link set dev km1s0123456789a addrgenmode none',
        'link set dev km1s0123456789a master km1s0 up',
      ],
      container: full,
    })
  })

  it('plans nothing for an attached container', () => {
    const plan = planAttach(
      hostWith(link(hostVeth)),
      parseNetnsState(ipOutput([LO_UP, link(eth0)], [route])),
      wanted,
    )
    assert.ok(planIsEmpty(plan), JSON.stringify(plan))
  })

  it('replaces a veth left from an earlier namespace, and an eth0 that is not its peer', () => {
    const stale = { ...hostVeth, link_index: 9 }
    const plan = planAttach(
      hostWith(link(stale)),
      parseNetnsState(ipOutput([LO_UP, link(eth0)], [route])),
      wanted,
    )
    assert.deepEqual(plan.containerFirst, ['link del dev eth0'])
    assert.deepEqual(plan.host.slice(0, 2), [
      'link del dev km1s0123456789a',
      'link add name km1s0123456789a mtu 1420 type veth peer name eth0 address 02:42:0a:2a:00:02 mtu 1420 netns km1s-a1b2c3-web',
    ])
    assert.deepEqual(plan.container, ['addr replace 10.42.0.2/24 dev eth0', ...full.slice(2)])
  })

  it('finishes a half-made attachment: namespace without veth', () => {
    const plan = planAttach(hostWith(), parseNetnsState(ipOutput([LO_UP], [])), wanted)
    assert.equal(plan.host.length, 3)
    assert.deepEqual(plan.container, full.slice(1))
  })

  it('fixes a wrong address, a detached or down veth, a missing route', () => {
    const loose = {
      ...hostVeth,
      master: undefined,
      flags: ['BROADCAST'],
      inet6_addr_gen_mode: 'eui64',
      addr_info: [inet6('fe80::5')],
    }
    const wrong = { ...eth0, addr_info: [inet('10.42.0.99', 24)] }
    const plan = planAttach(
      hostWith(link(loose)),
      parseNetnsState(ipOutput([LO_UP, link(wrong)], [])),
      wanted,
    )
    assert.deepEqual(plan, {
      containerFirst: [],
      host: [
        'link set dev km1s0123456789a addrgenmode none',
        'addr del fe80::5/64 dev km1s0123456789a',
        'link set dev km1s0123456789a master km1s0 up',
      ],
      container: [
        'addr del 10.42.0.99/24 dev eth0',
        'addr replace 10.42.0.2/24 dev eth0',
        'route replace default via 10.42.0.1 dev eth0',
      ],
    })
    const down = { ...eth0, mtu: 1420, flags: ['BROADCAST'] }
    assert.deepEqual(
      planAttach(hostWith(link(hostVeth)), parseNetnsState(ipOutput([LO_UP, down], [route])), wanted)
        .container,
      ['link set dev eth0 up'],
    )
  })

  it('needs the bridge', () => {
    throwsCode(
      () => planAttach(parseNetnsState(ipOutput([LO_UP])), parseNetnsState(ipOutput([LO_DOWN], [])), wanted),
      'ERR_NO_BRIDGE',
    )
  })
})

// --- on the host, inside namespaces made here ------------------------------------------------------------

const isRoot = process.getuid?.() === 0
const hasIp = existsSync('/usr/sbin/ip') || existsSync('/sbin/ip') || existsSync('/bin/ip')

describe('container network on the host', { skip: !(isRoot && hasIp) && 'needs root and iproute2' }, () => {
  // Unique per test process; the "host" is a namespace of its own, never the root one.
  const instance = createHash('sha256').update(`km1s-net-test ${process.pid}`).digest('hex').slice(0, 6)
  const hostNs = `km1s-t${process.pid}-host`
  const curNs = `km1s-t${process.pid}-cur`
  const subnet = '10.42.0.0/24'
  const a = { instance, container: 'alpha', subnet, ip: '10.42.0.2', hostNetns: hostNs }
  const b = { instance, container: 'beta', subnet, ip: '10.42.0.3', hostNetns: hostNs }
  const nsA = netnsName(instance, 'alpha')
  const nsB = netnsName(instance, 'beta')
  const servers = new Set<ChildProcess>()

  before(() => {
    // Fails if the name exists: never take over someone else's namespace.
    execFileSync('ip', ['netns', 'add', hostNs])
    execFileSync('ip', ['-n', hostNs, 'link', 'set', 'dev', 'lo', 'up'])
    // A non-bridge address of the "host", reached only through the containers' default route.
    execFileSync('ip', ['-n', hostNs, 'addr', 'add', '10.99.0.1/32', 'dev', 'lo'])
  })

  after(() => {
    for (const s of servers) s.kill('SIGKILL')
    const mine = readdirSync('/run/netns').filter((n) => n.startsWith(`km1s-${instance}-`))
    for (const ns of [...mine, hostNs, curNs]) {
      if (existsSync(`/run/netns/${ns}`)) execFileSync('ip', ['netns', 'del', ns])
    }
    const left = readdirSync('/run/netns').filter(
      (n) => n.startsWith(`km1s-${instance}-`) || n === hostNs || n === curNs,
    )
    assert.deepEqual(left, [])
  })

  interface IpJson {
    ifname?: string
    flags?: string[]
    address?: string
    linkinfo?: { info_kind?: string }
    addr_info?: Array<{ family: string; local: string; prefixlen: number }>
    gateway?: string
    dev?: string
  }
  const ipJson = (ns: string, ...args: string[]): IpJson[] =>
    JSON.parse(execFileSync('ip', ['-n', ns, '-j', ...args], { encoding: 'utf8' }))
  const inetOf = (ns: string, dev: string): string[] =>
    (ipJson(ns, 'addr', 'show', 'dev', dev)[0]?.addr_info ?? []).map(
      (x) => `${x.family} ${x.local}/${x.prefixlen}`,
    )

  /** Serves "pong" on ip:7777 from inside a namespace. */
  async function serve(ns: string, ip: string): Promise<ChildProcess> {
    const script = `require('net').createServer((s) => s.end('pong')).listen(7777, '${ip}', () => console.log('ready'))`
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    servers.add(child)
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no server in ${ns}`)), 5_000)
      child.stdout?.on('data', () => {
        clearTimeout(timer)
        resolve()
      })
      child.on('exit', () => reject(new Error(`server in ${ns} exited`)))
    })
    return child
  }
  function stop(child: ChildProcess): void {
    child.kill('SIGKILL')
    servers.delete(child)
  }
  /** Connects from inside a namespace; resolves to what came back. */
  async function fetchFrom(ns: string, ip: string): Promise<string> {
    const script = `const s = require('net').connect(7777, '${ip}'); s.setTimeout(2000, () => process.exit(2)); s.on('data', (d) => { process.stdout.write(d); process.exit(0) })`
    const { stdout } = await run('ip', ['netns', 'exec', ns, process.execPath, '-e', script], {
      timeout: 5_000,
    })
    return stdout
  }

  it('makes the bridge once: the second call changes nothing', async (t) => {
    const first = await ensureBridge({ subnet, hostNetns: hostNs })
    assert.ok(first.applied.length >= 3)
    const second = await ensureBridge({ subnet, hostNetns: hostNs })
    assert.deepEqual(second.applied, [])
    const br = ipJson(hostNs, '-d', 'link', 'show', 'dev', BRIDGE)[0]
    assert.equal(br?.linkinfo?.info_kind, 'bridge')
    assert.ok(br?.flags?.includes('UP'))
    assert.equal(br?.address, bridgeMac(subnet))
    assert.deepEqual(inetOf(hostNs, BRIDGE), ['inet 10.42.0.1/24'])
    t.diagnostic(`ensureBridge applied ${first.applied.length} lines`)
  })

  it('attaches two containers that reach each other and, through the bridge, the host', async (t) => {
    const t0 = performance.now()
    const ra = await attachContainer(a)
    const t1 = performance.now()
    const rb = await attachContainer(b)
    const t2 = performance.now()
    t.diagnostic(`attach: ${(t1 - t0).toFixed(1)} ms, ${(t2 - t1).toFixed(1)} ms`)
    assert.ok(ra.netnsCreated && rb.netnsCreated)
    for (const [ns, ip] of [
      [nsA, a.ip],
      [nsB, b.ip],
    ] as const) {
      assert.deepEqual(
        inetOf(ns, 'eth0').filter((x) => x.startsWith('inet ')),
        [`inet ${ip}/24`],
      )
      assert.ok(ipJson(ns, 'link', 'show', 'dev', 'lo')[0]?.flags?.includes('UP'))
      assert.deepEqual(
        ipJson(ns, 'route', 'show', 'default').map((r) => `${r.gateway} ${r.dev}`),
        ['10.42.0.1 eth0'],
      )
    }
    const veths = await listKm1sVeths({ hostNetns: hostNs })
    assert.deepEqual(
      veths.map((v) => [v.name, v.attached, v.up]),
      [vethName(instance, 'alpha'), vethName(instance, 'beta')].sort().map((n) => [n, true, true]),
    )
    assert.deepEqual(await listContainerNetns(instance), ['alpha', 'beta'])
    // With ports the bridge has carrier now, which is when the kernel would add a link-local address.
    await new Promise((r) => setTimeout(r, 50))
    assert.deepEqual(inetOf(hostNs, BRIDGE), ['inet 10.42.0.1/24'])
    // Nothing appeared in this test's own namespace.
    const here = JSON.parse(execFileSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{
      ifname: string
    }>
    assert.ok(
      !here.some((l) => l.ifname === vethName(instance, 'alpha') || l.ifname === vethName(instance, 'beta')),
    )

    const server = await serve(nsA, a.ip)
    try {
      assert.equal(await fetchFrom(nsB, a.ip), 'pong')
    } finally {
      stop(server)
    }
    const serverB = await serve(nsB, b.ip)
    try {
      assert.equal(await fetchFrom(nsA, b.ip), 'pong')
    } finally {
      stop(serverB)
    }
    const host = await serve(hostNs, '10.99.0.1')
    try {
      assert.equal(await fetchFrom(nsA, '10.99.0.1'), 'pong', 'the default route goes through the bridge')
    } finally {
      stop(host)
    }
  })

  it('is idempotent', async (t) => {
    const t0 = performance.now()
    const again = await attachContainer(a)
    t.diagnostic(`attach with nothing to do: ${(performance.now() - t0).toFixed(1)} ms`)
    assert.deepEqual(again, { netnsCreated: false, applied: [] })
  })

  it('repairs a deleted veth and a wrong address', async (t) => {
    execFileSync('ip', ['-n', hostNs, 'link', 'del', 'dev', vethName(instance, 'alpha')])
    const t0 = performance.now()
    const r = await attachContainer(a)
    t.diagnostic(`repair of a deleted veth: ${(performance.now() - t0).toFixed(1)} ms`)
    assert.equal(r.netnsCreated, false)
    assert.ok(r.applied.some((l) => l.startsWith('link add')))

    execFileSync('ip', ['-n', nsB, 'addr', 'flush', 'dev', 'eth0'])
    execFileSync('ip', ['-n', nsB, 'addr', 'add', '10.42.0.99/24', 'dev', 'eth0'])
    const rb = await attachContainer(b)
    assert.ok(!rb.applied.some((l) => l.startsWith('link add')), 'the veth is kept')
    assert.deepEqual(
      inetOf(nsB, 'eth0').filter((x) => x.startsWith('inet ')),
      ['inet 10.42.0.3/24'],
    )
    assert.deepEqual((await attachContainer(a)).applied, [])
    assert.deepEqual((await attachContainer(b)).applied, [])
    const server = await serve(nsA, a.ip)
    try {
      assert.equal(await fetchFrom(nsB, a.ip), 'pong')
    } finally {
      stop(server)
    }
  })

  it('recovers from a namespace deleted behind its back and a stale namespace file', async () => {
    // The host end of a veth whose namespace is deleted goes away asynchronously: attach right after.
    execFileSync('ip', ['netns', 'del', nsB])
    const r = await attachContainer(b)
    assert.equal(r.netnsCreated, true)
    assert.deepEqual(
      inetOf(nsB, 'eth0').filter((x) => x.startsWith('inet ')),
      ['inet 10.42.0.3/24'],
    )
    assert.deepEqual((await attachContainer(b)).applied, [])

    // What a crash of `ip netns add` between creating the file and mounting the namespace leaves.
    const gamma = { instance, container: 'gamma', subnet, ip: '10.42.0.4', hostNetns: hostNs }
    writeFileSync(`/run/netns/${netnsName(instance, 'gamma')}`, '')
    const rg = await attachContainer(gamma)
    assert.equal(rg.netnsCreated, true)
    assert.deepEqual((await attachContainer(gamma)).applied, [])
    await detachContainer(gamma)
  })

  it('refuses an address outside the subnet, a missing bridge, a missing host namespace', async () => {
    await assert.rejects(attachContainer({ ...a, ip: '10.42.0.1' }), { code: 'ERR_INVALID_ADDRESS' })
    await assert.rejects(attachContainer({ ...a, ip: '10.43.0.2' }), { code: 'ERR_INVALID_ADDRESS' })
    await assert.rejects(
      ensureBridge({ subnet, hostNetns: `km1s-t${process.pid}-none` }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_CONTAINER_NETWORK')
        assert.match(
          err.message,
          /^Could not set up the bridge km1s0 \(.*Cannot open network namespace.*\); .*\.$/,
        )
        return true
      },
    )
    execFileSync('ip', ['netns', 'add', curNs])
    try {
      await assert.rejects(attachContainer({ ...a, container: 'nobridge', hostNetns: curNs }), {
        code: 'ERR_NO_BRIDGE',
      })
    } finally {
      await detachContainer({ instance, container: 'nobridge', hostNetns: curNs })
      execFileSync('ip', ['netns', 'del', curNs])
    }
  })

  it('detaches: namespace and veth are gone, twice is fine', async (t) => {
    const t0 = performance.now()
    await detachContainer(a)
    const t1 = performance.now()
    await detachContainer(b)
    t.diagnostic(`detach: ${(t1 - t0).toFixed(1)} ms, ${(performance.now() - t1).toFixed(1)} ms`)
    await detachContainer(a)
    assert.deepEqual(await listContainerNetns(instance), [])
    assert.deepEqual(await listKm1sVeths({ hostNetns: hostNs }), [])
    assert.ok(!existsSync(`/run/netns/${nsA}`))
  })

  it('works in the current namespace when no host namespace is named', async () => {
    // A child joins a namespace of the test with nsenter (network only: `ip netns exec` would give it a
    // mount namespace whose `ip netns add` mounts the parent never sees) and runs the host side there.
    execFileSync('ip', ['netns', 'add', curNs])
    const mod = new URL('../../../src/network/container-net.ts', import.meta.url).href
    const c = { instance, container: 'current', subnet: '10.42.1.0/24', ip: '10.42.1.2' }
    const script = `const m = await import(${JSON.stringify(mod)})
      const c = ${JSON.stringify(c)}
      await m.ensureBridge({ subnet: c.subnet })
      const r = await m.attachContainer(c)
      console.log(JSON.stringify({ r, veths: await m.listKm1sVeths() }))`
    const { stdout } = await run(
      'nsenter',
      [`--net=/run/netns/${curNs}`, '--', process.execPath, '--input-type=module', '-e', script],
      { timeout: 10_000 },
    )
    const out = JSON.parse(stdout) as {
      r: { netnsCreated: boolean }
      veths: Array<{ name: string; attached: boolean }>
    }
    assert.equal(out.r.netnsCreated, true)
    assert.deepEqual(
      out.veths.map((v) => [v.name, v.attached]),
      [[vethName(instance, 'current'), true]],
    )
    const ns = netnsName(instance, 'current')
    assert.deepEqual(
      inetOf(ns, 'eth0').filter((x) => x.startsWith('inet ')),
      ['inet 10.42.1.2/24'],
    )
    await detachContainer({ instance, container: 'current', hostNetns: curNs })
    assert.ok(!existsSync(`/run/netns/${ns}`))
    assert.deepEqual(await listKm1sVeths({ hostNetns: curNs }), [])
    execFileSync('ip', ['netns', 'del', curNs])
  })
})
