import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { overlayChecks } from '../../../src/doctor/overlay.ts'
import { renderNftables } from '../../../src/network/nftables.ts'
import { planOverlayLink, wantedPeers } from '../../../src/network/overlay.ts'
import { parseClusterCidr } from '../../../src/network/subnet.ts'
import {
  addAgainArgs,
  endpointsOf,
  FIRST_CONTACT_MS,
  FIRST_CONTACT_TRIES,
  type FirstContact,
  generateWgPrivateKey,
  loadOrCreateWgKey,
  PERSISTENT_KEEPALIVE,
  parseWgDump,
  planFirstContact,
  planWgSet,
  type WgPeerState,
  type WgState,
  wgInterfaceName,
  wgPublicKey,
} from '../../../src/network/wireguard.ts'
import { NodeValue } from '../../../src/state/record.ts'

const hasWg = (() => {
  try {
    execFileSync('wg', ['--version'])
    return true
  } catch {
    return false
  }
})()

describe('nftables', () => {
  it('replaces one table atomically: declare, delete, make again, with the masquerade of this subnet', () => {
    const text = renderNftables({ subnet: '10.42.7.0/24', clusterCidr: '10.42.0.0/16' })
    const lines = text.split('\n')
    assert.deepEqual(lines.slice(0, 3), ['table inet km1s', 'delete table inet km1s', 'table inet km1s {'])
    assert.match(text, /type nat hook postrouting priority srcnat; policy accept;/)
    assert.match(text, /ip saddr 10\.42\.7\.0\/24 ip daddr != 10\.42\.0\.0\/16 oifname != "km1s0" masquerade/)
    assert.equal(text, renderNftables({ subnet: '10.42.7.0/24', clusterCidr: '10.42.0.0/16' }), 'pure')
    assert.throws(() => renderNftables({ subnet: '10.42.7.1/24', clusterCidr: '10.42.0.0/16' }))
  })

  it('nft accepts the file (check mode)', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, () => {
    const text = renderNftables({ subnet: '10.42.7.0/24', clusterCidr: '10.42.0.0/16' })
    execFileSync('nft', ['-c', '-f', '-'], { input: text })
  })
})

describe('WireGuard keys and names', () => {
  it('the interface name is unique per instance and fits the kernel limit', () => {
    assert.equal(wgInterfaceName('a1b2c3'), 'km1swa1b2c3')
    assert.ok(wgInterfaceName('a1b2c3').length <= 15)
    assert.throws(() => wgInterfaceName('../x'))
  })

  it('derives the public key as wg pubkey does', { skip: hasWg ? false : 'no wg' }, () => {
    for (let i = 0; i < 3; i++) {
      const priv = generateWgPrivateKey()
      const expected = execFileSync('wg', ['pubkey'], { input: `${priv}\n`, encoding: 'utf8' }).trim()
      assert.equal(wgPublicKey(priv), expected)
    }
  })

  it('makes the key once, 0600, keeps it, and refuses a damaged one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'km1s-wgkey-'))
    try {
      const path = join(dir, 'network', 'wg.key')
      const a = await loadOrCreateWgKey(path)
      assert.equal(statSync(path).mode & 0o777, 0o600)
      assert.equal(readFileSync(path, 'utf8').trim(), a.privateKey)
      assert.deepEqual(await loadOrCreateWgKey(path), a)
      writeFileSync(path, 'garbage\n')
      await assert.rejects(loadOrCreateWgKey(path), { code: 'ERR_WG_KEY' })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('endpoints from node records', () => {
  it('takes the underlay IPs of the multiaddrs, without loopback and link-local, IPv4 first', () => {
    assert.deepEqual(
      endpointsOf(
        [
          '/ip4/127.0.0.1/tcp/4100',
          '/ip6/fe80::1/tcp/4100',
          '/ip6/2001:db8::5/tcp/4100',
          '/ip4/198.18.0.11/tcp/4100',
          '/ip4/198.18.0.11/udp/4100/quic-v1',
          '/dns4/example.org/tcp/1',
        ],
        51820,
      ),
      ['198.18.0.11:51820', '[2001:db8::5]:51820'],
    )
  })
})

const K1 = 'mBtS1Lq0fM8PdVh0cY1s5kQy0tq1V3d2VkUq1V3d2VE='
const K2 = 'nBtS1Lq0fM8PdVh0cY1s5kQy0tq1V3d2VkUq1V3d2VE='
const SELF = 'oBtS1Lq0fM8PdVh0cY1s5kQy0tq1V3d2VkUq1V3d2VE='

describe('wg show dump', () => {
  it('parses the interface and its peers', () => {
    const dump =
      `PRIV\t${SELF}\t51820\toff\n` +
      `${K1}\t(none)\t198.18.0.12:51820\t10.42.3.0/24\t1700000000\t1234\t5678\t25\n` +
      `${K2}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n`
    const s = parseWgDump(dump)
    assert.equal(s.publicKey, SELF)
    assert.equal(s.listenPort, 51820)
    assert.deepEqual(s.peers[0], {
      publicKey: K1,
      endpoint: '198.18.0.12:51820',
      allowedIps: ['10.42.3.0/24'],
      latestHandshake: 1700000000,
      rxBytes: 1234,
      txBytes: 5678,
      keepalive: 25,
    })
    assert.deepEqual(s.peers[1], {
      publicKey: K2,
      endpoint: null,
      allowedIps: [],
      latestHandshake: 0,
      rxBytes: 0,
      txBytes: 0,
      keepalive: 0,
    })
  })
})

describe('planWgSet', () => {
  const want = {
    publicKey: SELF,
    listenPort: 51820,
    peers: [{ publicKey: K1, name: 'n2', allowedIps: ['10.42.3.0/24'], endpoints: ['198.18.0.12:51820'] }],
  }
  const fresh: WgState = { publicKey: null, listenPort: 0, peers: [] }

  it('configures a fresh interface in one wg set', () => {
    assert.deepEqual(planWgSet(fresh, want, '/d/wg.key'), [
      'listen-port',
      '51820',
      'private-key',
      '/d/wg.key',
      'peer',
      K1,
      'endpoint',
      '198.18.0.12:51820',
      'persistent-keepalive',
      String(PERSISTENT_KEEPALIVE),
      'allowed-ips',
      '10.42.3.0/24',
    ])
  })

  it('does nothing when the interface is as wanted (idempotent)', () => {
    const have: WgState = {
      publicKey: SELF,
      listenPort: 51820,
      peers: [
        {
          publicKey: K1,
          endpoint: '198.18.0.12:51820',
          allowedIps: ['10.42.3.0/24'],
          latestHandshake: 5,
          rxBytes: 1,
          txBytes: 1,
          keepalive: PERSISTENT_KEEPALIVE,
        },
      ],
    }
    assert.deepEqual(planWgSet(have, want, '/d/wg.key'), [])
    // A roamed endpoint that is one of the candidates is left alone; an unknown one is reset.
    const roamed = {
      ...have,
      peers: [{ ...(have.peers[0] as WgState['peers'][0]), endpoint: '198.18.0.99:4' }],
    }
    assert.deepEqual(planWgSet(roamed, want, '/d/wg.key'), ['peer', K1, 'endpoint', '198.18.0.12:51820'])
  })

  it('removes peers no node record names, moves allowed IPs', () => {
    const have: WgState = {
      publicKey: SELF,
      listenPort: 51820,
      peers: [
        {
          publicKey: K2,
          endpoint: null,
          allowedIps: ['10.42.9.0/24'],
          latestHandshake: 0,
          rxBytes: 0,
          txBytes: 0,
          keepalive: 25,
        },
        {
          publicKey: K1,
          endpoint: '198.18.0.12:51820',
          allowedIps: ['10.42.1.0/24'],
          latestHandshake: 0,
          rxBytes: 0,
          txBytes: 0,
          keepalive: 25,
        },
      ],
    }
    assert.deepEqual(planWgSet(have, want, '/d/wg.key'), [
      'peer',
      K2,
      'remove',
      'peer',
      K1,
      'allowed-ips',
      '10.42.3.0/24',
    ])
  })
})

describe('planOverlayLink', () => {
  const want = { ifname: 'km1swa1b2c3', clusterCidr: '10.42.0.0/16', src: '10.42.3.1' }
  it('brings the interface up at the MTU and routes the cluster range from the bridge address', () => {
    assert.deepEqual(planOverlayLink({ mtu: 1420, up: false, routes: [] }, want), [
      'link set dev km1swa1b2c3 up',
      'route replace 10.42.0.0/16 dev km1swa1b2c3 src 10.42.3.1',
    ])
    assert.deepEqual(
      planOverlayLink({ mtu: 1420, up: true, routes: [{ dst: '10.42.0.0/16', src: '10.42.3.1' }] }, want),
      [],
    )
  })

  it('fixes the MTU, a stale source after a move, and removes other routes', () => {
    assert.deepEqual(
      planOverlayLink(
        {
          mtu: 1500,
          up: true,
          routes: [
            { dst: '10.42.0.0/16', src: '10.42.9.1' },
            { dst: '10.99.0.0/16', src: null },
          ],
        },
        want,
      ),
      [
        'link set dev km1swa1b2c3 mtu 1420',
        'route del 10.99.0.0/16 dev km1swa1b2c3',
        'route replace 10.42.0.0/16 dev km1swa1b2c3 src 10.42.3.1',
      ],
    )
  })
})

describe('doctor overlay lines', () => {
  const base = {
    subnet: '10.42.3.0/24',
    clusterCidr: '10.42.0.0/16',
    bridge: 'km1s0 10.42.3.1',
    mtu: 1420,
    interface: 'km1swa1b2c3',
    kind: 'wireguard-go',
    pid: 42,
    restarts: 0,
    publicKey: SELF,
    listenPort: 51820,
    applies: 3,
    applyErrors: 0,
    lastError: null,
  }
  const peer = {
    id: 'x',
    name: 'n2',
    state: 'alive',
    publicKey: K1,
    subnet: '10.42.7.0/24',
    endpoint: '198.18.0.12:51820',
    rxBytes: 2048,
    txBytes: 10,
  }

  it('one line per peer: ok with a fresh handshake, a warning and a fix without', () => {
    const now = 1_000_000
    const checks = overlayChecks(
      {
        ...base,
        peers: [
          { ...peer, latestHandshake: now - 5_000 },
          { ...peer, name: 'n3', latestHandshake: null },
        ],
      },
      now,
    )
    assert.equal(checks.length, 3)
    assert.equal(checks[0]?.level, 'ok')
    assert.deepEqual({ id: checks[1]?.id, level: checks[1]?.level }, { id: 'overlay-n2', level: 'ok' })
    assert.match(
      checks[1]?.detail ?? '',
      /10\.42\.7\.0\/24 via 198\.18\.0\.12:51820, handshake 5 s ago, rx 2\.0 KiB, tx 10 B/,
    )
    assert.equal(checks[2]?.level, 'warn')
    assert.match(checks[2]?.fix ?? '', /UDP port 51820/)
  })

  it('says when the agent runs no network, and fails on an apply error', () => {
    assert.equal(overlayChecks(undefined, 0)[0]?.level, 'warn')
    assert.equal(overlayChecks({ ...base, lastError: 'nft: boom', peers: [] }, 0)[0]?.level, 'fail')
  })
})

describe('the WireGuard fields of the node record', () => {
  const node = {
    name: 'n1',
    arch: 'amd64',
    cpus: 2,
    memory: 1,
    version: '0.1.0',
    addresses: ['/ip4/198.18.0.11/tcp/4100'],
    startedAt: 1,
  }
  it('takes a real key and port, refuses anything that could become another wg argument', () => {
    assert.ok(NodeValue.safeParse({ ...node, wgPublicKey: K1, wgPort: 51820 }).success)
    assert.ok(NodeValue.safeParse({ ...node, wgPublicKey: null }).success)
    for (const bad of ['remove', `${K1} remove`, '--help', K1.slice(1), 'x'.repeat(44)])
      assert.ok(!NodeValue.safeParse({ ...node, wgPublicKey: bad }).success, bad)
    assert.ok(!NodeValue.safeParse({ ...node, wgPublicKey: K1, wgPort: 0 }).success)
    assert.ok(!NodeValue.safeParse({ ...node, wgPublicKey: K1, wgPort: 70000 }).success)
  })
})

describe('wantedPeers', () => {
  const cluster = parseClusterCidr('10.42.0.0/16')
  const P1 = '12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
  const P2 = '12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB'
  const P3 = '12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC'
  const info = (name: string, key: string | null, ip: string, wgPort?: number) => ({
    name,
    arch: 'amd64',
    cpus: 2,
    memory: 1,
    version: '0.1.0',
    addresses: [`/ip4/${ip}/tcp/4100`],
    startedAt: 1,
    wgPublicKey: key,
    ...(wgPort ? { wgPort } : {}),
  })

  it('one peer per other node with a key: its /24s of the range, its endpoints, no one else', () => {
    const peers = wantedPeers({
      cluster,
      selfKey: SELF,
      members: [
        { id: 'self', self: true, state: 'alive', info: info('n1', SELF, '198.18.0.11') },
        { id: P1, self: false, state: 'alive', info: info('n2', K1, '198.18.0.12', 51999) },
        { id: P2, self: false, state: 'dead', info: info('n3', K2, '198.18.0.13') },
        // No key yet, or the same key as another node (a copied data directory): left out.
        { id: P3, self: false, state: 'alive', info: info('n4', null, '198.18.0.14') },
        { id: 'dup', self: false, state: 'alive', info: info('n5', K1, '198.18.0.15') },
      ],
      claims: [
        { cidr: '10.42.2.0/24', peer: P1, claimedAt: 1 },
        { cidr: '0.0.0.0/0', peer: P1, claimedAt: 1 },
        { cidr: '10.43.0.0/24', peer: P2, claimedAt: 1 },
        { cidr: '10.42.3.0/24', peer: P2, claimedAt: 1 },
      ],
    })
    assert.deepEqual(peers, [
      {
        id: P1,
        state: 'alive',
        name: 'n2',
        publicKey: K1,
        allowedIps: ['10.42.2.0/24'],
        subnet: '10.42.2.0/24',
        endpoints: ['198.18.0.12:51999'],
      },
      {
        id: P2,
        state: 'dead',
        name: 'n3',
        publicKey: K2,
        allowedIps: ['10.42.3.0/24'],
        subnet: '10.42.3.0/24',
        endpoints: ['198.18.0.13:51820'],
      },
    ])
  })
})

describe('planFirstContact (a stuck first handshake: the peer is added again)', () => {
  const LOW = 'ABtS1Lq0fM8PdVh0cY1s5kQy0tq1V3d2VkUq1V3d2VE='
  const peer: WgPeerState = {
    publicKey: K1,
    endpoint: '198.18.0.12:51820',
    allowedIps: ['10.42.3.0/24'],
    latestHandshake: 0,
    rxBytes: 0,
    txBytes: 148,
    keepalive: PERSISTENT_KEEPALIVE,
  }
  const plan = (
    over: Partial<WgPeerState> = {},
    opts: { self?: string; alive?: boolean; contact?: FirstContact | null; now?: number } = {},
  ) =>
    planFirstContact({
      peers: [{ ...peer, ...over }],
      selfKey: opts.self ?? LOW,
      alive: () => opts.alive ?? true,
      contacts: new Map(opts.contact === null ? [] : [[K1, opts.contact ?? { addedAt: 10_000, tries: 0 }]]),
      now: opts.now ?? 10_000 + FIRST_CONTACT_MS,
    })

  it('adds again a live peer without a handshake a second after it was added, and looks again later', () => {
    assert.deepEqual(plan(), { again: [peer], later: true })
  })

  it('waits until the second is over, still looking again later', () => {
    assert.deepEqual(plan({}, { now: 10_000 + FIRST_CONTACT_MS - 1 }), { again: [], later: true })
  })

  it('only on the node whose key sorts first, so that the two never start again together', () => {
    assert.ok(SELF > K1)
    assert.deepEqual(plan({}, { self: SELF }), { again: [], later: false })
  })

  it('never once a handshake happened, without an endpoint, for a dead node, or after its tries', () => {
    const none = { again: [], later: false }
    assert.deepEqual(plan({ latestHandshake: 1_700_000_000 }), none)
    assert.deepEqual(plan({ endpoint: null }), none)
    assert.deepEqual(plan({}, { alive: false }), none)
    assert.deepEqual(plan({}, { contact: null }), none, 'a peer it did not add is not its to add again')
    assert.deepEqual(plan({}, { contact: { addedAt: 0, tries: FIRST_CONTACT_TRIES } }), none)
    assert.deepEqual(plan({}, { contact: { addedAt: 0, tries: FIRST_CONTACT_TRIES - 1 } }).again, [peer])
  })

  it('adds a peer again as it is, in one wg set: remove, then endpoint, keepalive and allowed IPs', () => {
    const args = addAgainArgs([peer, { ...peer, publicKey: K2, allowedIps: [], keepalive: 0 }])
    const ka = PERSISTENT_KEEPALIVE
    assert.equal(
      args.join(' '),
      `peer ${K1} remove peer ${K1} endpoint 198.18.0.12:51820 persistent-keepalive ${ka} allowed-ips 10.42.3.0/24 ` +
        `peer ${K2} remove peer ${K2} endpoint 198.18.0.12:51820 persistent-keepalive ${ka}`,
    )
  })
})
