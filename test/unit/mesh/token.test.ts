import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { generateClusterSecret } from '../../../src/mesh/identity.ts'
import { decodeToken, encodeToken } from '../../../src/mesh/token.ts'

describe('join token', () => {
  it('round-trips any secret', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (secret) => {
        assert.deepEqual(decodeToken(encodeToken(secret)).secret, secret)
      }),
    )
  })

  it('accepts surrounding whitespace and upper case (copied from a terminal or typed)', () => {
    const secret = generateClusterSecret()
    const token = encodeToken(secret)
    assert.deepEqual(decodeToken(`  ${token.toUpperCase()}\n`).secret, secret)
  })

  it('refuses every single-character typo as damaged', () => {
    const token = encodeToken(generateClusterSecret())
    const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
    for (let i = 'km1s'.length; i < token.length; i++) {
      const ch = token[i] ?? 'a'
      const other = alphabet[(alphabet.indexOf(ch) + 1) % alphabet.length] ?? 'a'
      const typo = token.slice(0, i) + other + token.slice(i + 1)
      assert.throws(
        () => decodeToken(typo),
        (err: Error & { code?: string }) => {
          assert.match(err.message, /damaged|newer km1s|version/)
          return err.code === 'ERR_TOKEN_DAMAGED' || err.code === 'ERR_TOKEN_VERSION'
        },
      )
    }
  })

  it('refuses a truncated token, a foreign string and bad characters with one sentence', () => {
    const token = encodeToken(generateClusterSecret())
    for (const bad of [token.slice(0, -3), 'hello', `${token.slice(0, 10)}!${token.slice(11)}`, '']) {
      assert.throws(
        () => decodeToken(bad),
        (err: Error & { code?: string }) =>
          err.code === 'ERR_TOKEN_DAMAGED' && /^The join token is damaged \(.+\); .+\.$/.test(err.message),
      )
    }
  })
})
