import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { sha256 } from 'multiformats/hashes/sha2'
import { gossipMessageId, gossipMessageIdString } from '../../../src/mesh/gossip-id.ts'

describe("mesh/gossip-id: gossipsub's message ids through OpenSSL", () => {
  it("gives the bytes of gossipsub's own StrictNoSign id (multiformats' sha256), so mixed nodes agree", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 2000 }), async (data) => {
        assert.deepEqual([...gossipMessageId({ data })], [...(await sha256.encode(data))])
      }),
    )
  })

  it('names equal ids by equal strings and different ids by different strings', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 }), (a, b) => {
        const same = Buffer.from(a).equals(Buffer.from(b))
        const sa = gossipMessageIdString(gossipMessageId({ data: a }))
        assert.equal(sa === gossipMessageIdString(gossipMessageId({ data: b })), same)
      }),
    )
  })

  it('reads only the bytes of a view into a larger buffer', () => {
    const big = new Uint8Array(100).fill(7)
    const id = gossipMessageId({ data: new Uint8Array([1, 2, 3]) })
    big.set(id, 10)
    assert.equal(gossipMessageIdString(big.subarray(10, 10 + id.length)), gossipMessageIdString(id))
  })
})
