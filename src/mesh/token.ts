// The join token: everything a new node needs to join, in one copy-pasteable word.
//   'km1s' + base32(version(1) | secret(32) | checksum(4))
// The checksum (first 4 bytes of SHA-256 over version and secret) turns a mistyped token into a clear
// error instead of a node that silently joins nothing.
import { createHash } from 'node:crypto'
import { base32 } from 'multiformats/bases/base32'
import { Km1sError } from '../common/errors.ts'
import { CLUSTER_SECRET_BYTES } from './identity.ts'

export const TOKEN_PREFIX = 'km1s'
export const TOKEN_VERSION = 1
const CHECKSUM_BYTES = 4

function checksum(body: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(body).digest().subarray(0, CHECKSUM_BYTES))
}

export function encodeToken(secret: Uint8Array): string {
  if (secret.length !== CLUSTER_SECRET_BYTES)
    throw new Error(`cluster secret must be ${CLUSTER_SECRET_BYTES} bytes`)
  const body = new Uint8Array(1 + CLUSTER_SECRET_BYTES)
  body[0] = TOKEN_VERSION
  body.set(secret, 1)
  const bytes = new Uint8Array(body.length + CHECKSUM_BYTES)
  bytes.set(body)
  bytes.set(checksum(body), body.length)
  // base32.baseEncode omits the multibase prefix character.
  return TOKEN_PREFIX + base32.baseEncode(bytes)
}

const damaged = (why: string) =>
  new Km1sError(
    'ERR_TOKEN_DAMAGED',
    `The join token is damaged (${why}); copy it again from 'km1s token' on a node of the cluster.`,
  )

export function decodeToken(input: string): { version: number; secret: Uint8Array } {
  const token = input.trim().toLowerCase()
  if (!token.startsWith(TOKEN_PREFIX)) throw damaged(`it does not start with '${TOKEN_PREFIX}'`)
  let bytes: Uint8Array
  try {
    bytes = base32.baseDecode(token.slice(TOKEN_PREFIX.length))
  } catch {
    throw damaged('it contains characters a token never has')
  }
  const version = bytes[0] ?? 0
  const v1Length = 1 + CLUSTER_SECRET_BYTES + CHECKSUM_BYTES
  if (bytes.length !== v1Length) {
    if (version > TOKEN_VERSION) {
      throw new Km1sError(
        'ERR_TOKEN_VERSION',
        `The join token is from a newer km1s (token version ${version}) or damaged; upgrade km1s on this node or copy the token again.`,
      )
    }
    throw damaged('it has the wrong length')
  }
  const body = bytes.subarray(0, 1 + CLUSTER_SECRET_BYTES)
  const sum = bytes.subarray(body.length)
  if (!checksum(body).every((b, i) => b === sum[i])) throw damaged('its checksum does not match')
  if (version !== TOKEN_VERSION) {
    throw new Km1sError(
      'ERR_TOKEN_VERSION',
      `The join token has version ${version}, which this km1s does not know; upgrade km1s on this node.`,
    )
  }
  return { version, secret: new Uint8Array(body.subarray(1)) }
}
