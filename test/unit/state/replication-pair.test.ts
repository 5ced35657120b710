// Two replications with real stores joined by in-memory streams: one session per new connection, started
// by the side with the smaller id, carries both sides' records; a record written while gossip does not reach a
// connected peer yet goes to it by a session of its own (unreached).
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId, Stream } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { streamPair } from '@libp2p/utils'
import { Replication, type ReplicationInit, STATE_TOPIC, unreached } from '../../../src/state/replication.ts'
import type { Store } from '../../../src/state/store.ts'
import { info, NO_ROUNDS_MS, silent, tempStore } from '../membership/fixtures.ts'
import { untilWithin } from '../until.ts'

const until = untilWithin(2_000)

type Handler = (stream: Stream, connection: { remotePeer: PeerId }) => void

interface Side {
  id: PeerId
  store: Store
  libp2p: EventTarget
  pubsub: EventTarget
  replication: Replication
  /** Sessions this side started. */
  dials: string[]
  handler?: Handler
  peers: PeerId[]
  /** Whether the fake gossip names every connected peer as a recipient (it delivers nothing either way). */
  gossipReaches: boolean
}

async function side(): Promise<Side> {
  const key = await generateKeyPair('Ed25519')
  const id = peerIdFromPrivateKey(key)
  const store = await tempStore(key, Date.now)
  const s = { id, store, dials: [] as string[], peers: [] as PeerId[] } as unknown as Side
  s.libp2p = Object.assign(new EventTarget(), {
    peerId: id,
    handle: async (_protocol: string, h: Handler) => {
      s.handler = h
    },
    unhandle: async () => {},
    getPeers: () => s.peers,
  })
  s.pubsub = Object.assign(new EventTarget(), {
    subscribe: () => {},
    unsubscribe: () => {},
    publish: async () => ({ recipients: s.gossipReaches ? [...s.peers] : [] }),
    topicValidators: new Map(),
  })
  return s
}

/** Two started sides whose sessions reach each other; `a` has the smaller id. */
async function pair(): Promise<[Side, Side]> {
  const [x, y] = [await side(), await side()]
  const [a, b] = x.id.toString() < y.id.toString() ? [x, y] : [y, x]
  for (const [me, other] of [
    [a, b],
    [b, a],
  ] as const) {
    Object.assign(me.libp2p, {
      dialProtocol: async (peer: PeerId) => {
        me.dials.push(peer.toString())
        const [out, inbound] = await streamPair()
        other.handler?.(inbound, { remotePeer: me.id })
        return out
      },
    })
    me.replication = new Replication({
      store: me.store,
      libp2p: me.libp2p as unknown as ReplicationInit['libp2p'],
      pubsub: me.pubsub as unknown as ReplicationInit['pubsub'],
      logger: silent,
      connectSyncMs: 300,
      syncIntervalMs: NO_ROUNDS_MS,
    })
    await me.replication.start()
    await me.store.put(`node/${me.id}`, info(me === a ? 'a' : 'b'))
  }
  return [a, b]
}

function connect(me: Side, other: Side): void {
  me.peers.push(other.id)
  me.libp2p.dispatchEvent(new CustomEvent('peer:connect', { detail: other.id }))
}

function subscribed(me: Side, other: Side): void {
  me.pubsub.dispatchEvent(
    new CustomEvent('subscription-change', {
      detail: { peerId: other.id, subscriptions: [{ topic: STATE_TOPIC, subscribe: true }] },
    }),
  )
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** `body` on a new pair, both stopped after it. */
async function withPair(body: (a: Side, b: Side) => Promise<void>): Promise<void> {
  const [a, b] = await pair()
  try {
    await body(a, b)
  } finally {
    for (const s of [a, b]) await s.replication.stop()
  }
}

/** Both sides see the connection. */
function joined(a: Side, b: Side): void {
  connect(a, b)
  connect(b, a)
}

describe('replication: one session per new connection', () => {
  it('the smaller id starts it, it carries both ways, and the other side starts none', () =>
    withPair(async (a, b) => {
      joined(a, b)
      subscribed(b, a)
      subscribed(a, b)
      await until('b has a', () => b.store.get(`node/${a.id}`) !== undefined)
      await until('a has b', () => a.store.get(`node/${b.id}`) !== undefined)
      await sleep(400) // past the connect fallback
      assert.deepEqual(a.dials, [b.id.toString()])
      assert.deepEqual(b.dials, [])
    }))

  it('a record written before gossip reaches the peer goes to it by a session at once', () =>
    withPair(async (a, b) => {
      joined(a, b)
      subscribed(a, b) // a's session runs; b has not yet seen a subscribe
      await until('b has a', () => b.store.get(`node/${a.id}`) !== undefined)
      await sleep(20)
      await b.store.put(`label/${b.id}`, { zone: 'kitchen' })
      subscribed(b, a)
      await until('a has the label', () => a.store.get(`label/${b.id}`) !== undefined)
      assert.deepEqual(b.dials, [a.id.toString()])
    }))

  it('a record that gossip reached every connected peer with starts no session', () =>
    withPair(async (a, b) => {
      joined(a, b)
      subscribed(a, b)
      subscribed(b, a)
      await until('b has a', () => b.store.get(`node/${a.id}`) !== undefined)
      b.gossipReaches = true
      await b.store.put(`label/${b.id}`, { zone: 'kitchen' })
      await sleep(400)
      assert.deepEqual(b.dials, [])
    }))

  it('without subscriptions only the smaller id runs one, at the fallback; a late subscription adds none', () =>
    withPair(async (a, b) => {
      joined(a, b)
      await sleep(100)
      assert.deepEqual([...a.dials, ...b.dials], [])
      await until('a has b', () => a.store.get(`node/${b.id}`) !== undefined)
      assert.ok(b.store.get(`node/${a.id}`), 'the session carried both ways')
      subscribed(a, b)
      subscribed(b, a)
      await sleep(400)
      assert.deepEqual(a.dials, [b.id.toString()])
      assert.deepEqual(b.dials, [])
    }))
})

describe('unreached', () => {
  it('is the connected peers that are not among the recipients, in their order', () => {
    assert.deepEqual(unreached(['a', 'b', 'c'], ['b']), ['a', 'c'])
    assert.deepEqual(unreached(['a', 'b'], ['b', 'a', 'x']), [])
    assert.deepEqual(unreached([], ['a']), [])
  })
})
