// What a user names an artifact by (NAME:TAG or a root CID) and the tag record that maps a NAME:TAG to one
// root CID per architecture. Pure functions over the record value, so the scheduler's questions are cheap.
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import { TagValue } from '../state/record.ts'
import { type CID, parseCid } from './cid.ts'

export { TagValue }

/** The arch of an artifact that runs anywhere (scripts, static files): matches every node. */
export const ANY_ARCH = 'any'
export const ArchName = z
  .string()
  .check(z.regex(/^[a-z0-9]{1,16}$/, 'an arch is 1–16 lowercase letters or digits'))

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/

export type ParsedRef = { kind: 'cid'; cid: CID } | { kind: 'tag'; name: string; tag: string; key: string }

/** A user's ref: a root CID, NAME:TAG, or NAME (tag `latest`). */
export function parseRef(ref: string): ParsedRef {
  const cid = parseCid(ref)
  if (cid) return { kind: 'cid', cid }
  const colon = ref.indexOf(':')
  const name = colon < 0 ? ref : ref.slice(0, colon)
  const tag = colon < 0 ? 'latest' : ref.slice(colon + 1)
  if (!NAME.test(name) || !TAG.test(tag))
    throw new Km1sError(
      'ERR_ARTIFACT_REF',
      `'${ref}' is neither NAME:TAG (a lowercase DNS name, a tag of letters, digits, '_', '.', '-') nor a root CID.`,
    )
  return { kind: 'tag', name, tag, key: `tag/${name}:${tag}` }
}

/** The root CID of `arch` in a tag record: the exact arch, else `any`, else undefined. */
export function cidForArch(value: TagValue, arch: string): string | undefined {
  return value.arches[arch]?.cid ?? value.arches[ANY_ARCH]?.cid
}

/** The tag record after a push of `arch`: the other arches stay side by side. */
export function withArch(
  current: TagValue | undefined,
  arch: string,
  entry: { cid: string; size: number; pushedAt: number },
): TagValue {
  return { arches: { ...(current?.arches ?? {}), [arch]: entry } }
}

/** The tag record after removing `arch`, or undefined when none is left (the record is deleted). */
export function withoutArch(current: TagValue, arch: string): TagValue | undefined {
  const arches = { ...current.arches }
  delete arches[arch]
  return Object.keys(arches).length === 0 ? undefined : { arches }
}

/** Root CIDs a ref names in a record value: every arch's for a tag, the CID itself for a CID. */
export function rootsOf(ref: string, tagValue: (key: string) => TagValue | undefined): string[] {
  let parsed: ParsedRef
  try {
    parsed = parseRef(ref)
  } catch {
    return []
  }
  if (parsed.kind === 'cid') return [parsed.cid.toString()]
  const value = tagValue(parsed.key)
  return value ? Object.values(value.arches).map((a) => a.cid) : []
}
