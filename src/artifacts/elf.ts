// The CPU architecture of an executable, read from its ELF header: push needs no --arch for a single binary.

/** The ELF header bytes that name the machine: magic, class, data (endianness), e_machine at offset 18. */
export const ELF_HEADER_BYTES = 20

const MACHINES: Record<number, { 32?: string; 64?: string }> = {
  3: { 32: '386' },
  40: { 32: 'armv7' },
  62: { 64: 'amd64' },
  183: { 64: 'arm64' },
  243: { 64: 'riscv64' },
}

/** km1s's name (as Go and OCI spell it) for the machine of an ELF file's header, or undefined. */
export function elfArch(header: Uint8Array): string | undefined {
  if (header.length < ELF_HEADER_BYTES) return undefined
  if (header[0] !== 0x7f || header[1] !== 0x45 || header[2] !== 0x4c || header[3] !== 0x46) return undefined
  const bits = header[4] === 1 ? 32 : header[4] === 2 ? 64 : undefined
  const little = header[5] === 1 ? true : header[5] === 2 ? false : undefined
  if (bits === undefined || little === undefined) return undefined
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength)
  return MACHINES[view.getUint16(18, little)]?.[bits]
}
