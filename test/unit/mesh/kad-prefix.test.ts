import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, it } from 'node:test'
import { kadKeyPrefix } from '../../../src/mesh/kad-prefix.ts'

/** The first 16 bits of the Kademlia key of the peer id that kad-dht's refresh makes from `x`. */
function keyPrefix16(x: number): number {
  const id = Buffer.alloc(34)
  id[0] = 0x12
  id[1] = 32
  id.writeUInt32BE(x, 2)
  return createHash('sha256').update(id).digest().readUInt16BE(0)
}

describe('kadKeyPrefix (the DHT refresh without its 65,536-entry table)', () => {
  it("agrees with kad-dht's own table on what an entry means", async () => {
    // The module the build replaces: entry p is a number whose key starts with the 16 bits of p.
    const table = (
      (await import(
        '../../../node_modules/@libp2p/kad-dht/dist/src/routing-table/generated-prefix-list.js'
      )) as {
        default: number[]
      }
    ).default
    for (const p of [0, 1, 0x1234, 0x8000, 0xffff]) assert.equal(keyPrefix16(table[p] as number), p)
  })

  it('finds a key with the first `bits` bits of the prefix, for every length a bucket can need', () => {
    for (const bits of [0, 1, 2, 5, 9, 16]) {
      for (const prefix of [0x0000, 0xffff, 0xa5c3]) {
        const x = kadKeyPrefix(prefix, bits)
        assert.ok(Number.isInteger(x) && x >= 0 && x < 2 ** 32)
        assert.equal(keyPrefix16(x) >>> (16 - bits), prefix >>> (16 - bits), `${bits} bits of ${prefix}`)
      }
    }
  })

  it('looks up a different id each time, not always the same one', () => {
    const seen = new Set(Array.from({ length: 8 }, () => kadKeyPrefix(0xa5c3, 4)))
    assert.ok(seen.size > 1)
  })

  it('refuses a prefix or length out of range', () => {
    assert.throws(() => kadKeyPrefix(0x10000, 4), RangeError)
    assert.throws(() => kadKeyPrefix(1, 17), RangeError)
    assert.throws(() => kadKeyPrefix(-1, 4), RangeError)
  })
})
