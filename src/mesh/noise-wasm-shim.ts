// What the bundle gives @libp2p/noise instead of its two WebAssembly helpers, @chainsafe/as-chacha20poly1305
// and @chainsafe/as-sha256 (scripts/build.mjs aliases both packages to this file). Noise instantiates them
// when it is imported and uses them for messages under 1,200 bytes (heartbeats, gossip: most of an idle
// agent's traffic); their memories and compiled code cost every agent ~5 MiB of resident memory, which a
// 1 GB Pi feels. Instead: the host's OpenSSL for every size, as noise itself does for larger messages. A
// fresh OpenSSL context per message costs ~20–30 µs for a seal and an open of 150 bytes here, about what
// @noble/ciphers' pure JavaScript costs once V8 has optimized it, and 8× less than noble costs before that
// or without the optimizing compilers (~180 µs); the WebAssembly took ~4.5. Only the names noise imports
// are here; tests running from source still load the originals, so both must agree
// (test/unit/mesh/noise-wasm-shim.test.ts). `getHKDF` is not from those packages: a build patch hands it to
// noise's default crypto in place of @noble/hashes' (scripts/build.mjs).
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createSecretKey,
  hkdfSync,
  type KeyObject,
} from 'node:crypto'

const TAG = 16

/**
 * OpenSSL key objects by noise's key arrays: a cipher made from a KeyObject skips Node's key preparation,
 * about a third of each message's cost in the interpreter (docs/benchmarks.md, mesh). Noise keeps one key
 * array per direction for the connection's life; the bytes are compared too, so a key changed in place
 * gets a new object.
 */
const keyObjects = new WeakMap<Uint8Array, { bytes: Buffer; key: KeyObject }>()

function keyObject(key: Uint8Array): KeyObject {
  const known = keyObjects.get(key)
  if (known?.bytes.equals(key)) return known.key
  const bytes = Buffer.from(key)
  const made = { bytes, key: createSecretKey(bytes) }
  keyObjects.set(key, made)
  return made.key
}

/** as-chacha20poly1305's context; the native cipher needs none. */
export function newInstance(): object {
  return {}
}

export class ChaCha20Poly1305 {
  // biome-ignore lint/complexity/noUselessConstructor: noise constructs it with as-chacha20poly1305's context
  constructor(_ctx?: object) {}

  seal(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad?: Uint8Array): Uint8Array {
    const c = createCipheriv('chacha20-poly1305', keyObject(key), nonce, { authTagLength: TAG })
    if (ad) c.setAAD(ad, { plaintextLength: plaintext.length })
    const body = c.update(plaintext)
    c.final()
    return Buffer.concat([body, c.getAuthTag()], body.length + TAG)
  }

  /** The plaintext, or null when the tag does not match (noise then fails the connection). */
  open(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, ad?: Uint8Array): Uint8Array | null {
    if (sealed.length < TAG) return null
    const d = createDecipheriv('chacha20-poly1305', keyObject(key), nonce, { authTagLength: TAG })
    const body = sealed.subarray(0, sealed.length - TAG)
    if (ad) d.setAAD(ad, { plaintextLength: body.length })
    d.setAuthTag(sealed.subarray(sealed.length - TAG))
    const out = d.update(body)
    try {
      d.final()
    } catch {
      return null
    }
    return out
  }
}

const NO_INFO = new Uint8Array(0)

/**
 * Noise's HKDF (the spec's, which is RFC 5869's with the chaining key as salt and no info) by OpenSSL: ~9 µs
 * against ~420 µs for @noble/hashes' without the optimizing compilers, four times per handshake; it was
 * ~4 % of the CPU of ten agents starting together (docs/benchmarks.md, mesh).
 */
export function getHKDF(ck: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array, Uint8Array] {
  const okm = new Uint8Array(hkdfSync('sha256', ikm, ck, NO_INFO, 96))
  return [okm.subarray(0, 32), okm.subarray(32, 64), okm.subarray(64, 96)]
}

/** as-sha256's digest. */
export function digest(data: Uint8Array): Uint8Array {
  return createHash('sha256').update(data).digest()
}
