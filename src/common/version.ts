import pkg from '../../package.json' with { type: 'json' }

export const KM1S_VERSION: string = pkg.version
