// The DHT's routing-table refresh (kad-dht's `refreshRoutingTable()`) looks up a random peer id in each k-bucket.
// kad-dht finds such an id through a table of 65,536 numbers, one per 16-bit prefix of the id's Kademlia key: a
// 480 KB source file that made ~1 MB of every agent's heap and bundle source, loaded whether or not the refresh
// ever runs (scripts/build.mjs replaces the table with this; docs/mesh.md). The refresh only needs the
// bucket's bits to match (a bucket of common prefix length T fixes T + 1 bits, a handful on a LAN), so hashing
// a few candidates finds one at once: 2^bits hashes on average, 2^16 for the deepest bucket.
import { createHash, randomInt } from 'node:crypto'

/** Most hashes tried before giving up: for 16 bits the chance of needing more is below e^-64. */
const MAX_TRIES = 1 << 22

/**
 * A number `x` whose peer id — the sha256 multihash `0x12 0x20 x(4 bytes, big endian) 0…0` — has a Kademlia key
 * (the sha256 of those 34 bytes) whose first `bits` bits are those of the 16-bit `prefix`. The search starts at
 * a random number, so each refresh looks up a different id.
 */
export function kadKeyPrefix(prefix: number, bits: number): number {
  if (
    !Number.isInteger(prefix) ||
    prefix < 0 ||
    prefix > 0xffff ||
    !Number.isInteger(bits) ||
    bits < 0 ||
    bits > 16
  ) {
    throw new RangeError(`kadKeyPrefix: prefix ${prefix} or bits ${bits} is out of range`)
  }
  const shift = 16 - bits
  const want = prefix >>> shift
  const key = Buffer.alloc(34)
  key[0] = 0x12
  key[1] = 32
  let x = randomInt(0, 2 ** 32 - MAX_TRIES)
  for (let i = 0; i < MAX_TRIES; i++, x++) {
    key.writeUInt32BE(x, 2)
    if (createHash('sha256').update(key).digest().readUInt16BE(0) >>> shift === want) return x
  }
  throw new Error(`kadKeyPrefix: no key with the ${bits}-bit prefix ${want} in ${MAX_TRIES} tries`)
}
