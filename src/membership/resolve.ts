import { Km1sError } from '../common/errors.ts'
import type { Member } from './membership.ts'

/** The node a user means by `ref`: its name, its peer id, or the tail of its peer id (as `km1s nodes` shows). */
export function resolveNode(members: Member[], ref: string): Member {
  const exact = members.filter((m) => m.id === ref || m.info.name === ref)
  const found = exact.length > 0 ? exact : ref.length >= 4 ? members.filter((m) => m.id.endsWith(ref)) : []
  if (found.length === 1 && found[0]) return found[0]
  if (found.length === 0) {
    throw new Km1sError(
      'ERR_NOT_FOUND',
      `No node is called ${ref}; 'km1s nodes' lists the names and ids this node knows.`,
    )
  }
  throw new Km1sError(
    'ERR_AMBIGUOUS',
    `${ref} names ${found.length} nodes (${found.map((m) => m.id.slice(-8)).join(', ')}); use the node id instead.`,
  )
}
