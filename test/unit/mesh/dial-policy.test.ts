import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { multiaddr } from '@multiformats/multiaddr'
import fc from 'fast-check'
import { isLoopbackAddr, peerIdOfAddr } from '../../../src/mesh/addresses.ts'
import {
  backoffMs,
  connectionToKeep,
  isHandshakeFailure,
  DEFAULT_DIAL_POLICY as P,
  shouldDial,
} from '../../../src/mesh/dial-policy.ts'

describe('dial policy', () => {
  it('lets exactly one side of a pair dial at once, and both after the grace period', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1 }), fc.string({ minLength: 1 }), (a, b) => {
        fc.pre(a !== b)
        assert.equal(Number(shouldDial(a, b, 0, P)) + Number(shouldDial(b, a, 0, P)), 1)
        assert.ok(shouldDial(a, b, P.graceMs, P) && shouldDial(b, a, P.graceMs, P))
      }),
    )
  })

  it('backs off exponentially up to the cap', () => {
    assert.equal(backoffMs(0, P), 0)
    assert.equal(backoffMs(1, P), P.baseBackoffMs)
    assert.equal(backoffMs(2, P), P.baseBackoffMs * 2)
    assert.equal(backoffMs(100, P), P.maxBackoffMs)
  })

  it('keeps the same connection on both sides of a pair', () => {
    const a = 'peerA'
    const b = 'peerB'
    const fromA = [
      { direction: 'outbound' as const, id: 1 },
      { direction: 'inbound' as const, id: 2 },
    ]
    const fromB = [
      { direction: 'inbound' as const, id: 1 },
      { direction: 'outbound' as const, id: 2 },
    ]
    assert.equal(connectionToKeep(a, b, fromA)?.id, 1)
    assert.equal(connectionToKeep(b, a, fromB)?.id, 1)
  })

  it('recognises a failed encrypted handshake, also nested, but not a refused connection', () => {
    const enc = Object.assign(new Error('x'), { name: 'EncryptionFailedError' })
    assert.ok(isHandshakeFailure(enc))
    assert.ok(isHandshakeFailure(new AggregateError([new Error('a'), enc])))
    assert.ok(isHandshakeFailure(new Error('dial', { cause: enc })))
    assert.ok(!isHandshakeFailure(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })))
  })
})

describe('addresses', () => {
  it('finds loopback addresses and peer ids', () => {
    assert.ok(isLoopbackAddr(multiaddr('/ip4/127.0.0.1/tcp/4100')))
    assert.ok(isLoopbackAddr(multiaddr('/ip6/::1/tcp/4100')))
    assert.ok(!isLoopbackAddr(multiaddr('/ip4/198.18.0.11/tcp/4100')))
    const id = '12D3KooWM2uCqpzNY18VWir9joi6e2HkswNL1dRNg76FmokkyPko'
    assert.equal(peerIdOfAddr(multiaddr(`/ip4/198.18.0.11/tcp/4100/p2p/${id}`)), id)
    assert.equal(peerIdOfAddr(multiaddr('/ip4/198.18.0.11/tcp/4100')), undefined)
  })
})
