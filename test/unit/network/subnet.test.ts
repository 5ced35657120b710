import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { claimRecordAction } from '../../../src/network/overlay.ts'
import {
  type Claim,
  chooseSubnet,
  claimsOf,
  claimWins,
  decideSubnet,
  isNodeSubnet,
  nodeSubnetAt,
  nodeSubnetCount,
  parseClusterCidr,
} from '../../../src/network/subnet.ts'
import { VALUE_SCHEMAS } from '../../../src/state/record.ts'

const A = '12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
const B = '12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB'
const C = '12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC'
const cluster = parseClusterCidr('10.42.0.0/16')
const peerArb = fc.stringMatching(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/)

describe('subnet arithmetic', () => {
  it('splits the cluster range into /24s', () => {
    assert.equal(nodeSubnetCount(cluster), 256)
    assert.equal(nodeSubnetAt(cluster, 0), '10.42.0.0/24')
    assert.equal(nodeSubnetAt(cluster, 255), '10.42.255.0/24')
    assert.equal(nodeSubnetCount(parseClusterCidr('10.8.4.0/22')), 4)
    assert.ok(isNodeSubnet(cluster, '10.42.7.0/24'))
    assert.ok(!isNodeSubnet(cluster, '10.43.7.0/24'))
    assert.ok(!isNodeSubnet(cluster, '10.42.7.0/25'))
    assert.ok(!isNodeSubnet(cluster, '10.42.7.1/24'))
  })

  it('refuses a cluster range smaller than a /24 or not a network', () => {
    assert.throws(() => parseClusterCidr('10.42.0.0/25'), { code: 'ERR_INVALID_SUBNET' })
    assert.throws(() => parseClusterCidr('10.42.0.1/16'), { code: 'ERR_INVALID_SUBNET' })
  })
})

describe('choosing a subnet', () => {
  it('is deterministic, inside the range, and never a taken one', () => {
    fc.assert(
      fc.property(
        peerArb,
        fc.uniqueArray(fc.integer({ min: 0, max: 255 }), { maxLength: 255 }),
        (peer, idx) => {
          const taken = new Set(idx.map((i) => nodeSubnetAt(cluster, i)))
          const a = chooseSubnet(cluster, peer, taken)
          assert.equal(a, chooseSubnet(cluster, peer, taken))
          assert.ok(isNodeSubnet(cluster, a))
          assert.ok(!taken.has(a))
        },
      ),
    )
  })

  it('says so when every /24 is taken', () => {
    const small = parseClusterCidr('10.42.0.0/23')
    const all = new Set([nodeSubnetAt(small, 0), nodeSubnetAt(small, 1)])
    assert.throws(() => chooseSubnet(small, A, all), { code: 'ERR_NO_SUBNET' })
  })

  it('spreads peers over the range', () => {
    const peers = fc.sample(peerArb, { numRuns: 50, seed: 7 })
    const picks = new Set(peers.map((p) => chooseSubnet(cluster, p, new Set())))
    assert.ok(picks.size > 40, `${picks.size} distinct of 50`)
  })
})

describe('the tie-break', () => {
  it('the earlier claim wins, then the smaller peer id; exactly one of two wins', () => {
    assert.ok(claimWins({ peer: B, claimedAt: 1 }, { peer: A, claimedAt: 2 }))
    assert.ok(claimWins({ peer: A, claimedAt: 5 }, { peer: B, claimedAt: 5 }))
    fc.assert(
      fc.property(peerArb, peerArb, fc.nat(), fc.nat(), (p, q, t, u) => {
        fc.pre(p !== q)
        const a = { peer: p, claimedAt: t }
        const b = { peer: q, claimedAt: u }
        assert.notEqual(claimWins(a, b), claimWins(b, a))
      }),
    )
  })
})

describe('decideSubnet', () => {
  const claim = (cidr: string, peer: string, claimedAt: number): Claim => ({ cidr, peer, claimedAt })

  it('claims a free subnet at first start, past the taken ones', () => {
    const first = chooseSubnet(cluster, A, new Set())
    const d = decideSubnet({ cluster, self: A, mine: undefined, records: [claim(first, B, 1)], now: 100 })
    assert.equal(d.changed, true)
    assert.equal(d.reason, 'first')
    assert.notEqual(d.claim.cidr, first)
    assert.deepEqual({ peer: d.claim.peer, claimedAt: d.claim.claimedAt }, { peer: A, claimedAt: 100 })
  })

  it('keeps its claim across restarts, also when its own record is there or missing', () => {
    const mine = claim('10.42.9.0/24', A, 50)
    for (const records of [[], [mine], [claim('10.42.9.0/24', B, 60)]]) {
      const d = decideSubnet({ cluster, self: A, mine, records, now: 100 })
      assert.deepEqual(d, { claim: mine, changed: false, reason: 'kept' })
    }
  })

  it('moves when an earlier claim of the same subnet exists, away from every taken one', () => {
    const mine = claim('10.42.9.0/24', A, 50)
    const records = [
      claim('10.42.9.0/24', B, 40),
      claim(chooseSubnet(cluster, A, new Set(['10.42.9.0/24'])), C, 1),
    ]
    const d = decideSubnet({ cluster, self: A, mine, records, now: 100 })
    assert.equal(d.reason, 'lost')
    assert.equal(d.changed, true)
    assert.ok(!records.some((r) => r.cidr === d.claim.cidr))
    assert.equal(d.claim.claimedAt, 100)
  })

  it('two nodes with one subnet: exactly one of them moves, whatever each sees first', () => {
    fc.assert(
      fc.property(fc.nat(1000), fc.nat(1000), (ta, tb) => {
        const a = claim('10.42.3.0/24', A, ta)
        const b = claim('10.42.3.0/24', B, tb)
        // Each sees the other's record (the replicated key holds one of them; either order).
        const da = decideSubnet({ cluster, self: A, mine: a, records: [b], now: 2000 })
        const db = decideSubnet({ cluster, self: B, mine: b, records: [a], now: 2000 })
        assert.equal(Number(da.changed) + Number(db.changed), 1)
      }),
    )
  })

  it('a fixed subnet (--subnet) is used as given and never moves', () => {
    const d = decideSubnet({
      cluster,
      self: A,
      mine: undefined,
      records: [claim('10.42.1.0/24', B, 1)],
      now: 5,
      fixed: '10.42.1.0/24',
    })
    assert.equal(d.claim.cidr, '10.42.1.0/24')
    assert.equal(d.reason, 'fixed')
    const again = decideSubnet({
      cluster,
      self: A,
      mine: d.claim,
      records: [],
      now: 9,
      fixed: '10.42.1.0/24',
    })
    assert.equal(again.changed, false)
  })

  it('a persisted claim outside the cluster range (the range changed) is replaced', () => {
    const d = decideSubnet({ cluster, self: A, mine: claim('10.99.0.0/24', A, 1), records: [], now: 5 })
    assert.equal(d.reason, 'outside')
    assert.ok(isNodeSubnet(cluster, d.claim.cidr))
  })
})

describe('subnet records', () => {
  it('claimsOf reads well-formed claims and skips the rest', () => {
    assert.deepEqual(
      claimsOf([
        { key: 'subnet/10.42.1.0/24', value: { peer: A, claimedAt: 3 } },
        { key: 'subnet/10.42.2.0/24', value: { peer: 'nobody', claimedAt: 3 } },
        { key: 'node/x', value: { peer: A, claimedAt: 3 } },
      ]),
      [{ cidr: '10.42.1.0/24', peer: A, claimedAt: 3 }],
    )
  })

  it('the record schema refuses anything but {peer, claimedAt}', () => {
    const schema = VALUE_SCHEMAS.subnet
    assert.ok(schema.safeParse({ peer: A, claimedAt: 1 }).success)
    assert.ok(!schema.safeParse({ peer: A }).success)
    assert.ok(!schema.safeParse({ peer: A, claimedAt: 1, extra: 1 }).success)
    assert.ok(!schema.safeParse({ peer: 'x', claimedAt: 1 }).success)
  })
})

describe('claimRecordAction', () => {
  it('writes a missing, outdated or beaten record, keeps its own, and never fights an earlier claim', () => {
    const mine = { peer: A, claimedAt: 10 }
    assert.equal(claimRecordAction(undefined, mine), 'write')
    assert.equal(claimRecordAction(mine, mine), 'keep')
    assert.equal(claimRecordAction({ peer: A, claimedAt: 3 }, mine), 'write')
    assert.equal(claimRecordAction({ peer: B, claimedAt: 20 }, mine), 'write')
    assert.equal(claimRecordAction({ peer: B, claimedAt: 5 }, mine), 'conflict')
  })
})
