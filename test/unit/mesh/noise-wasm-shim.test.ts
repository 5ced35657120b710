import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as asChaCha from '@chainsafe/as-chacha20poly1305'
import * as asSha from '@chainsafe/as-sha256'
import { pureJsCrypto } from '@libp2p/noise'
import fc from 'fast-check'
import * as shim from '../../../src/mesh/noise-wasm-shim.ts'

describe("mesh/noise-wasm-shim: the bundle stand-in for noise's WebAssembly helpers", () => {
  const wasm = new asChaCha.ChaCha20Poly1305(asChaCha.newInstance())
  const native = new shim.ChaCha20Poly1305(shim.newInstance())
  const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n })

  it('seals exactly as as-chacha20poly1305 does, and each opens the other', () => {
    fc.assert(
      fc.property(
        bytes(32),
        bytes(12),
        fc.oneof(fc.uint8Array({ maxLength: 1300 }), fc.uint8Array({ minLength: 1150, maxLength: 3000 })),
        fc.uint8Array({ maxLength: 64 }),
        (k, n, p, ad) => {
          const a = wasm.seal(k, n, p, ad)
          const b = native.seal(k, n, p, ad)
          assert.deepEqual([...b], [...a])
          assert.deepEqual([...(native.open(k, n, a, ad) ?? [])], [...p])
          assert.deepEqual([...(wasm.open(k, n, b, ad) ?? [])], [...p])
        },
      ),
    )
  })

  it("derives noise's keys exactly as noise's own HKDF does, also from an empty input (its Split)", () => {
    fc.assert(
      fc.property(bytes(32), fc.oneof(bytes(0), bytes(32), fc.uint8Array({ maxLength: 96 })), (ck, ikm) => {
        const want = pureJsCrypto.getHKDF(ck, ikm).map((k) => [...k])
        assert.deepEqual(
          shim.getHKDF(ck, ikm).map((k) => [...k]),
          want,
        )
      }),
    )
  })

  it('refuses a tampered message, a wrong key and a runt', () => {
    const k = new Uint8Array(32).fill(1)
    const n = new Uint8Array(12)
    const sealed = native.seal(k, n, new Uint8Array([1, 2, 3]))
    const bad = Uint8Array.from(sealed)
    bad[0] = (bad[0] ?? 0) ^ 1
    assert.equal(native.open(k, n, bad), null)
    assert.equal(native.open(new Uint8Array(32), n, sealed), null)
    assert.equal(native.open(k, n, new Uint8Array(5)), null)
    const big = native.seal(k, n, new Uint8Array(5000))
    big[4000] = (big[4000] ?? 0) ^ 1
    assert.equal(native.open(k, n, big), null)
  })

  it('follows a key changed in place (its OpenSSL key object is cached by the array)', () => {
    const k = new Uint8Array(32).fill(3)
    const n = new Uint8Array(12)
    const p = new Uint8Array([9, 8, 7])
    assert.deepEqual([...native.seal(k, n, p)], [...wasm.seal(k, n, p)])
    k[0] = 4
    assert.deepEqual([...native.seal(k, n, p)], [...wasm.seal(k, n, p)])
    assert.deepEqual([...(native.open(k, n, wasm.seal(k, n, p)) ?? [])], [...p])
  })

  it('hashes as as-sha256 does', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 500 }), (d) => {
        assert.deepEqual([...shim.digest(d)], [...asSha.digest(d)])
      }),
    )
  })
})
