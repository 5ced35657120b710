import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import fc from 'fast-check'
import { Level } from 'level'
import { pino } from 'pino'
import { editLabels, nodeView } from '../../../src/agent/handlers.ts'
import type { Member } from '../../../src/membership/membership.ts'
import type { WireRecord } from '../../../src/state/record.ts'
import { Store } from '../../../src/state/store.ts'

const NOW = 1_700_000_000_000
const keys = await Promise.all([0, 1, 2].map(() => generateKeyPair('Ed25519')))
const [self, other, third] = keys.map((k) => peerIdFromPrivateKey(k).toString()) as [string, string, string]

let dir = ''
let db: Level<string, unknown>
let store: Store
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'km1s-handlers-'))
  db = new Level<string, unknown>(dir, { valueEncoding: 'json' })
  await db.open()
  store = new Store({
    records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
    meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
    privateKey: keys[0] as (typeof keys)[0],
    logger: pino({ level: 'silent' }),
    now: () => NOW,
    flushDelayMs: 3_600_000,
  })
  await store.load()
})
after(async () => {
  await store.stop()
  await db.close()
  await rm(dir, { recursive: true, force: true })
})

const member = (id: string, over: Partial<Member> = {}, info: Partial<Member['info']> = {}): Member => ({
  id,
  self: false,
  state: 'alive',
  lastHeard: NOW - 1_500,
  ...over,
  info: {
    name: 'pi-b',
    arch: 'arm64',
    cpus: 4,
    memory: 2 ** 30,
    version: '0.1.0',
    addresses: ['/ip4/10.0.0.2/tcp/4001'],
    startedAt: NOW - 90_500,
    wgPublicKey: null,
    ...info,
  },
})

describe('editLabels', () => {
  it('sets and overrides labels and removes others, without changing its input', () => {
    const current = { zone: 'kitchen', disk: 'ssd', gpu: 'none' }
    const copy = { ...current }
    assert.deepEqual(editLabels(current, { zone: 'attic', tier: 'gold' }, ['gpu', 'absent']), {
      zone: 'attic',
      disk: 'ssd',
      tier: 'gold',
    })
    assert.deepEqual(current, copy)
    assert.deepEqual(editLabels({}, {}, []), {})
    assert.deepEqual(editLabels({ a: '1' }, {}, ['a']), {})
  })

  it('leaves exactly the keys of current and set, minus the removed ones', () => {
    const labels = fc.dictionary(fc.constantFrom('a', 'b', 'c', 'd', 'e'), fc.string({ maxLength: 3 }))
    fc.assert(
      fc.property(labels, labels, fc.subarray(['a', 'b', 'c', 'd', 'e']), (current, set, remove) => {
        const next = editLabels(current, set, remove)
        for (const k of ['a', 'b', 'c', 'd', 'e']) {
          const expected = remove.includes(k) ? undefined : k in set ? set[k] : current[k]
          assert.equal(next[k], expected)
        }
      }),
    )
  })
})

describe('nodeView', () => {
  it('maps a member and its labels from the store', async () => {
    await store.put(`label/${other}`, { zone: 'kitchen', tier: 'gold' })
    const m = member(other, { state: 'suspect' })
    assert.deepEqual(nodeView(m, store, NOW), {
      name: 'pi-b',
      id: other,
      state: 'suspect',
      self: false,
      addresses: ['/ip4/10.0.0.2/tcp/4001'],
      arch: 'arm64',
      cpus: 4,
      memory: 2 ** 30,
      labels: { zone: 'kitchen', tier: 'gold' },
      version: '0.1.0',
      uptime: 91, // 90.5 s, rounded
      lastHeard: 1_500,
    })
  })

  it('shows no labels for a node without a label record or whose labels were deleted', async () => {
    assert.deepEqual(nodeView(member(third), store, NOW).labels, {})
    await store.put(`label/${self}`, { zone: 'attic' })
    assert.deepEqual(nodeView(member(self, { self: true }), store, NOW).labels, { zone: 'attic' })
    await store.delete(`label/${self}`)
    assert.deepEqual(nodeView(member(self, { self: true }), store, NOW).labels, {})
  })

  it('shows -1 for a node never heard from, and never a negative uptime or last-heard time', () => {
    const never = nodeView(member(third, { lastHeard: 0, state: 'dead' }), store, NOW)
    assert.equal(never.lastHeard, -1)
    assert.equal(never.state, 'dead')
    const skewed = nodeView(member(third, { lastHeard: NOW + 2_000 }, { startedAt: NOW + 5_000 }), store, NOW)
    assert.equal(skewed.lastHeard, 0)
    assert.equal(skewed.uptime, 0)
    const me = nodeView(member(self, { self: true, lastHeard: NOW }, { name: 'pi-a' }), store, NOW)
    assert.equal(me.self, true)
    assert.equal(me.name, 'pi-a')
    assert.equal(me.lastHeard, 0)
  })
})
